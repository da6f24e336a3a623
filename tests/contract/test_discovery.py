"""Workers found by DNS (a Kubernetes headless Service): two stand-ins on one port at two
loopback addresses, and a resolver the test controls, as DNS answers would change."""

from __future__ import annotations

import httpx

from gateway.config import DnsDiscoveryConfig, EngineKind, GatewaySettings, PoolConfig
from gateway.http.app import create_app
from gateway.upstream.pool import resolve_addresses
from tests.processes import free_port
from tests.standin import serve_asgi, serve_standin
from tests.standin_fixtures import ENGINE_MODEL, PUBLIC_MODEL, chat_body

HEADLESS = "vllm-workers.default.svc.cluster.local"


async def test_workers_come_and_go_with_the_dns_answer() -> None:
    port = free_port()
    answer = {"127.0.0.1"}

    async def resolve(host: str, resolved_port: int) -> set[str]:
        assert (host, resolved_port) == (HEADLESS, port)
        return set(answer)

    pool = PoolConfig(
        name="discovered",
        engine=EngineKind.VLLM,
        model=PUBLIC_MODEL,
        upstream_model=ENGINE_MODEL,
        discovery=DnsDiscoveryConfig(host=HEADLESS, port=port, interval_s=3600),
    )
    app = create_app(GatewaySettings(pools=[pool]))
    registry = app.state.gateway.pools
    registry.pools[0]._resolve = resolve  # what the cluster's DNS would answer
    async with (
        serve_standin("vllm", host="127.0.0.1", port=port) as first,
        serve_standin("vllm", host="127.0.0.2", port=port) as second,
        serve_asgi(app, lifespan="on") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        discovered = registry.pools[0]

        async def ask(times: int) -> list[int]:
            return [
                (await client.post("/v1/chat/completions", json=chat_body())).status_code
                for _ in range(times)
            ]

        assert [w.url for w in discovered.workers] == [first.url]
        assert await ask(2) == [200, 200]

        answer.add("127.0.0.2")  # a new pod
        await discovered.discover()
        assert {w.url for w in discovered.workers} == {first.url, second.url}
        assert await ask(4) == [200] * 4
        assert len(second.engine.requests) >= 1  # it got traffic as soon as it was found

        answer.discard("127.0.0.1")  # a pod went away
        await discovered.discover()
        before = len(first.engine.requests)
        assert await ask(3) == [200] * 3
        assert len(first.engine.requests) == before  # nothing new for the retired worker
        assert [w.url for w in discovered.workers] == [second.url]  # idle: dropped

        async def broken(host: str, resolved_port: int) -> set[str]:
            raise OSError("DNS is down")

        discovered._resolve = broken
        await discovered.discover()  # a failed lookup keeps the workers there are
        assert [w.url for w in discovered.workers] == [second.url]
        gauges = [
            line
            for line in (await client.get("/metrics")).text.splitlines()
            if line.startswith(("ttc_worker_healthy{", "ttc_worker_in_flight{"))
        ]
        assert gauges and not any(first.url.split("://")[1] in line for line in gauges)


async def test_the_default_resolver_returns_the_addresses_of_a_name() -> None:
    assert "127.0.0.1" in await resolve_addresses("localhost", 80)
    assert await resolve_addresses("127.0.0.2", 80) == {"127.0.0.2"}
