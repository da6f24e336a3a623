"""``ttc-gateway bench soak``: its accounting, and a short run end to end."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from gateway.bench.soak import Load, Report, SoakOptions

OPTIONS = SoakOptions(clients=4, duration_s=600, baseline_s=30, chunk_delay_ms=20, rss_every_s=10)


def test_lost_requests_are_those_neither_completed_nor_failed() -> None:
    load = Load("gateway", sent=10, completed=7, errors=Counter({"HTTP 502": 2}))
    assert load.lost == 1


def test_rss_growth_is_measured_from_minute_one_to_the_end() -> None:
    mib = 2**20
    rss = [(0.0, 50 * mib), (60.0, 100 * mib), (300.0, 104 * mib), (600.0, 109 * mib)]
    report = Report(OPTIONS, Load("direct"), Load("gateway"), rss)
    first, last, growth = report.rss_growth()  # type: ignore[misc]
    assert (first, last) == (100 * mib, 109 * mib) and abs(growth - 0.09) < 1e-9
    by_minute = [(0, 50 * mib), (1, 100 * mib), (5, 104 * mib), (10, 109 * mib)]
    assert report.rss_by_minute() == by_minute
    short = Report(OPTIONS, Load("direct"), Load("gateway"), [(0.0, mib), (50.0, mib)])
    assert short.rss_growth() is None


def test_a_short_soak_runs_end_to_end_and_reports_targets() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "bench", "soak", "--clients", "8", "--duration", "3",
         "--baseline", "1", "--rss-every", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "| gateway |" in run.stdout and "PASS errors through the gateway: 0" in run.stdout
    assert "PASS lost requests: 0" in run.stdout
