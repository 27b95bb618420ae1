"""The configuration model (spec: config.md), shared by runner and uploader.

Polymorphic sections pick a variant by `type:` from the plain tables below; the validator in
`veeksha.shared.schema` reads the same tables, so adding a variant is one dataclass and one table row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal

from veeksha.shared.errors import ConfigError
from veeksha.shared.records import SLO_ALIASES, SLO_METRICS
from veeksha.shared.schema import INT64_MAX, build, spec
from veeksha.shared.secret import Secret
from veeksha.shared.userpath import home_problem

# ---------------------------------------------------------------- limits

# The longest duration the runner may wait on: every timeout, interval, ramp-up and think time.
# Larger values are typos, and the timers that wait on them overflow (a 1e10 s connect timeout was an
# OverflowError after the server started) or never end (a 1e300 s think time hung the drain).
# A week is longer than any benchmark, and in milliseconds still fits a 32-bit integer.
MAX_SECONDS = 7 * 24 * 3600
SECONDS_BOUND = "seconds: a week"


def seconds(**kwargs: Any) -> Any:
    """A duration field: `spec` with the week bound added."""
    return spec(le=MAX_SECONDS, bound=SECONDS_BOUND, **kwargs)


# The smallest rate: a mean gap under a week (a smaller rate is a longer wait than any allowed).
MIN_PER_SECOND = 2e-6


def per_second(**kwargs: Any) -> Any:
    """A rate field, at least MIN_PER_SECOND."""
    return spec(ge=MIN_PER_SECOND, bound="per second: a gap under a week", **kwargs)


# Sizes the runner allocates per unit up front, bounded so a typo is an error at load, not a run that
# exhausts memory once it has started (`[0.0] * target`, one random stream per shared prefix).
# Concurrent sessions: each holds a connection, and one client address has at most ~64K ports to a
# server: a million sessions is already many client machines (Ray drivers), past any server we measure.
MAX_CONCURRENT_SESSIONS = 1_000_000
# Shared prefixes: each is a random stream of its own in every driver (~3 KB, 30 MB at the bound, built
# in under a second). More distinct prefixes than this is no longer a shared prefix workload.
MAX_PREFIX_POOL = 10_000
# Requests of one session: a linear session's count is held to this by the runner
# (runner/sessions/lengths.py MAX_GRAPH_COUNT); a branching session's layers x width likewise.
MAX_SESSION_REQUESTS = 10_000


# ---------------------------------------------------------------- length / wait generators


# Each generator's `reach()`: the largest value it gives as configured; for an unbounded
# distribution, this many standard deviations above its mean (a bound on a field such as a think
# time applies to it).
TAIL_DEVIATIONS = 6


@dataclass(frozen=True)
class FixedGen:
    type: Literal["fixed"] = "fixed"
    value: float = spec(default=1, ge=0)

    def reach(self) -> float:
        return self.value


@dataclass(frozen=True)
class UniformGen:
    """Inclusive on both ends."""

    type: Literal["uniform"] = "uniform"
    min: float = spec(default=1, ge=0)
    max: float = spec(default=1, ge=0)

    def check(self) -> str | None:
        return f"min ({self.min}) must be <= max ({self.max})" if self.min > self.max else None

    def reach(self) -> float:
        return self.max


@dataclass(frozen=True)
class NormalGen:
    type: Literal["normal"] = "normal"
    mean: float = spec(default=100, ge=0)
    std: float = spec(default=10, ge=0)
    min: float = spec(default=0, ge=0)
    max: float = spec(default=1e9, ge=0)

    def check(self) -> str | None:
        return f"min ({self.min}) must be <= max ({self.max})" if self.min > self.max else None

    def reach(self) -> float:
        # The default max (1e9) is no bound in practice: six deviations above the mean is.
        return min(self.max, self.mean + TAIL_DEVIATIONS * self.std)


@dataclass(frozen=True)
class ZipfGen:
    type: Literal["zipf"] = "zipf"
    theta: float = spec(default=1.2, gt=0)
    min: float = spec(default=1, ge=0)
    max: float = spec(default=1000, ge=0)

    def check(self) -> str | None:
        return f"min ({self.min}) must be <= max ({self.max})" if self.min > self.max else None

    def reach(self) -> float:
        return self.max


@dataclass(frozen=True)
class InverseGaussianGen:
    type: Literal["inverse_gaussian"] = "inverse_gaussian"
    mean: float = spec(default=100, gt=0)
    shape: float = spec(default=100, gt=0)

    def reach(self) -> float:
        # Unbounded: six deviations above the mean (the variance is mean**3 / shape). Products, not
        # powers: a huge mean gives inf (refused by any bound), where ** raises OverflowError.
        return self.mean + TAIL_DEVIATIONS * self.mean * math.sqrt(self.mean / self.shape)


@dataclass(frozen=True)
class FixedStairGen:
    """Walks `values` in order, each repeated `repeat_each` times, then starts over."""

    type: Literal["fixed_stair"] = "fixed_stair"
    values: list[float] = spec(factory=lambda: [1.0], ge=0)
    repeat_each: int = spec(default=1, ge=1)

    def check(self) -> str | None:
        return "values must not be empty" if not self.values else None

    def reach(self) -> float:
        return max(self.values, default=0.0)


LENGTH_GENERATORS: dict[str, type] = {
    "fixed": FixedGen,
    "uniform": UniformGen,
    "normal": NormalGen,
    "zipf": ZipfGen,
    "inverse_gaussian": InverseGaussianGen,
    "fixed_stair": FixedStairGen,
}
LengthGen = FixedGen | UniformGen | NormalGen | ZipfGen | InverseGaussianGen | FixedStairGen


def gen_field(*, limit: dict[str, Any] | None = None, **defaults: Any) -> Any:
    """A length-generator field whose default is built as a loaded one would be (typed: 0 → 0.0);
    `limit` bounds the values it reaches (`le` and `bound` of `spec`)."""
    kind = defaults.pop("type", "fixed")
    return spec(
        factory=lambda: build(LENGTH_GENERATORS[kind], {"type": kind, **defaults}),
        variants=LENGTH_GENERATORS,
        **(limit or {}),
    )


# A think time is a duration the driver waits on: bounded as one.
THINK_TIME_LIMIT = {"le": MAX_SECONDS, "bound": SECONDS_BOUND}


# ---------------------------------------------------------------- client


@dataclass(frozen=True)
class ClientConfig:
    type: Literal["openai_chat_completions", "openai_completions"] = "openai_chat_completions"
    api_base: str | None = spec(default=None, doc="env OPENAI_API_BASE when unset")
    model: str | None = spec(default=None, doc="required unless the server lists one model")
    api_key: Secret | None = spec(default=None, doc="env OPENAI_API_KEY when unset; never written")
    headers: dict[str, str] = spec(factory=dict)
    request_timeout: float = seconds(default=300.0, gt=0)
    connect_timeout: float = seconds(default=10.0, gt=0)
    stream: bool = True
    # An empty name was taken as "the default" (max) or "not sent" (min) without a word.
    max_tokens_param: str | None = spec(
        default=None, nonempty="give the field name (e.g. max_tokens), or leave it out for the default"
    )
    ignore_eos: bool = True
    min_tokens_param: str | None = spec(
        default=None, nonempty="give the field name (e.g. min_tokens), or leave it out to send none"
    )
    include_usage: bool = True
    additional_sampling_params: dict[str, Any] = spec(factory=dict)
    tokenizer: str | None = spec(
        default=None,
        nonempty="give a tokenizer.json path or tokenizer folder, or leave it out for the approximation",
        doc="local tokenizer.json or HF tokenizer dir",
    )
    http_backend: Literal["native", "httpx"] = "native"
    max_connections: int | None = spec(default=None, ge=1, doc="default: sized to the load")

    def __post_init__(self) -> None:
        # A key given as a plain string (in code, tests) is still a Secret: no form of this config
        # can print it.
        if self.api_key is not None and not isinstance(self.api_key, Secret):
            object.__setattr__(self, "api_key", Secret(self.api_key))


# ---------------------------------------------------------------- traffic


@dataclass(frozen=True)
class PoissonIntervals:
    type: Literal["poisson"] = "poisson"
    arrival_rate: float = per_second(default=1.0, doc="sessions per second")


@dataclass(frozen=True)
class GammaIntervals:
    type: Literal["gamma"] = "gamma"
    arrival_rate: float = per_second(default=1.0)
    cv: float = spec(default=1.0, gt=0, doc="coefficient of variation of the gaps")


@dataclass(frozen=True)
class FixedIntervals:
    type: Literal["fixed"] = "fixed"
    interval: float | None = seconds(default=None, gt=0, doc="seconds between sessions")
    arrival_rate: float | None = per_second(default=None)

    def check(self) -> str | None:
        if (self.interval is None) == (self.arrival_rate is None):
            return "set exactly one of interval or arrival_rate"
        return None

    @property
    def rate(self) -> float:
        return self.arrival_rate if self.arrival_rate else 1.0 / (self.interval or 1.0)


INTERVAL_GENERATORS: dict[str, type] = {
    "poisson": PoissonIntervals,
    "gamma": GammaIntervals,
    "fixed": FixedIntervals,
}


def arrival_rate_of(gen: PoissonIntervals | GammaIntervals | FixedIntervals) -> float:
    return gen.rate if isinstance(gen, FixedIntervals) else gen.arrival_rate


@dataclass(frozen=True)
class RateTraffic:
    type: Literal["rate"] = "rate"
    interval_generator: PoissonIntervals | GammaIntervals | FixedIntervals = spec(
        factory=PoissonIntervals, variants=INTERVAL_GENERATORS
    )
    max_concurrent_sessions: int | None = spec(default=None, ge=1, le=MAX_CONCURRENT_SESSIONS, admission=True)
    cancel_session_on_failure: bool = True


@dataclass(frozen=True)
class ConcurrentTraffic:
    type: Literal["concurrent"] = "concurrent"
    target_concurrent_sessions: int = spec(default=1, ge=1, le=MAX_CONCURRENT_SESSIONS, admission=True)
    rampup_seconds: float = seconds(default=0.0, ge=0)
    cancel_session_on_failure: bool = True


TRAFFIC_SCHEDULERS: dict[str, type] = {"rate": RateTraffic, "concurrent": ConcurrentTraffic}

# ---------------------------------------------------------------- sessions


@dataclass(frozen=True)
class SingleRequestGraph:
    type: Literal["single_request"] = "single_request"


@dataclass(frozen=True)
class LinearGraph:
    type: Literal["linear"] = "linear"
    num_request_generator: LengthGen = gen_field(type="fixed", value=3)
    request_wait_generator: LengthGen = gen_field(type="fixed", value=0, limit=THINK_TIME_LIMIT)
    inherit_history: bool = True


@dataclass(frozen=True)
class BranchingGraph:
    type: Literal["branching"] = "branching"
    num_layers_generator: LengthGen = gen_field(type="fixed", value=3)
    layer_width_generator: LengthGen = gen_field(type="uniform", min=1, max=3)
    fan_out_generator: LengthGen = gen_field(type="uniform", min=1, max=2)
    fan_in_generator: LengthGen = gen_field(type="uniform", min=1, max=2)
    request_wait_generator: LengthGen = gen_field(type="fixed", value=0, limit=THINK_TIME_LIMIT)
    inherit_history: bool = True

    def admission_check(self) -> str | None:
        """Each count alone may be 10,000; a session of 10,000 layers of 10,000 requests (10**8 nodes,
        built in memory at once) may not. A count beyond 10,000 on its own is left to the runner's
        check, which names it (runner/sessions/lengths.py).

        The product is checked only when both counts come from generators whose largest value is one
        the user wrote and the runner draws as readily as any other (fixed, uniform, fixed_stair:
        EXPLICIT_MAX_COUNTS). A zipf, normal or inverse gaussian count reaches its `reach()` (zipf's
        default max 1000, six deviations) only far in its tail: `num_layers {type: zipf}` x 20 wide
        is a reasonable session, not one of 20,000 requests. Those are held by the runner's cap on
        each count (MAX_GRAPH_COUNT, 10,000) alone. An admission limit: a new run only (schema)."""
        counts = (self.num_layers_generator, self.layer_width_generator)
        if not all(isinstance(gen, EXPLICIT_MAX_COUNTS) for gen in counts):
            return None
        layers, width = (gen.reach() for gen in counts)
        if layers * width <= MAX_SESSION_REQUESTS or max(layers, width) > MAX_SESSION_REQUESTS:
            return None
        return (
            f"sessions of up to {layers * width:,.0f} requests (num_layers_generator up to {layers:,.0f} x "
            f"layer_width_generator up to {width:,.0f}) are not allowed; at most {MAX_SESSION_REQUESTS:,} "
            "requests per session: use fewer or narrower layers"
        )


# Count generators whose reach() is a value the user wrote and the runner draws as readily as any
# other (BranchingGraph.admission_check).
EXPLICIT_MAX_COUNTS = (FixedGen, UniformGen, FixedStairGen)

SESSION_GRAPHS: dict[str, type] = {
    "single_request": SingleRequestGraph,
    "linear": LinearGraph,
    "branching": BranchingGraph,
}


@dataclass(frozen=True)
class TextChannel:
    type: Literal["text"] = "text"
    body_length_generator: LengthGen = gen_field(type="uniform", min=100, max=500)
    shared_prefix_ratio: float = spec(default=0.0, ge=0, le=1)
    shared_prefix_probability: float = spec(default=0.0, ge=0, le=1)
    # Sessions with a shared prefix pick one of this many run-wide prefixes, uniformly (default: the
    # session generator's shared_prefix_pool_size, else 1).
    shared_prefix_pool_size: int | None = spec(default=None, ge=1, le=MAX_PREFIX_POOL, admission=True)


CHANNELS: dict[str, type] = {"text": TextChannel}
# A channel name (evaluators' target_channels): the CHANNELS table's keys, for the schema to check.
if TYPE_CHECKING:
    ChannelName = str
else:
    ChannelName = Literal[tuple(CHANNELS)]


@dataclass(frozen=True)
class TextOutputSpec:
    output_length_generator: LengthGen = gen_field(type="uniform", min=64, max=256)


@dataclass(frozen=True)
class OutputSpec:
    text: TextOutputSpec = spec(factory=TextOutputSpec)


@dataclass(frozen=True)
class SyntheticSessions:
    type: Literal["synthetic"] = "synthetic"
    session_graph: SingleRequestGraph | LinearGraph | BranchingGraph = spec(
        factory=SingleRequestGraph, variants=SESSION_GRAPHS
    )
    channels: list[TextChannel] = spec(factory=lambda: [TextChannel()], variants=CHANNELS)
    output_spec: OutputSpec = spec(factory=OutputSpec)
    # Where config.md puts it; a channel's own shared_prefix_pool_size wins.
    shared_prefix_pool_size: int = spec(
        default=1, ge=1, le=MAX_PREFIX_POOL, admission=True, doc="run-wide shared prefixes to pick from"
    )


@dataclass(frozen=True)
class TraceSessions:
    type: Literal["trace"] = "trace"
    path: str = spec(default="", doc="local JSONL or CSV file; never fetched from the network")
    flavor: Literal["auto", "request_log", "conversation"] = "auto"
    timed_replay: bool = spec(default=False, doc="use the trace's timestamps as arrival times")
    time_scale: float = spec(default=1.0, gt=0, doc="timed replay speed-up: 2.0 = twice as fast")
    wrap: bool = spec(default=True, doc="start over at the end of the trace")

    def check(self) -> str | None:
        if not self.path:
            return "path: a trace file path is required"
        if names_a_directory(self.path):
            return f"path: {self.path!r} is a directory; give the trace file in it (.jsonl or .csv)"
        if self.time_scale != 1.0 and not self.timed_replay:
            return "time_scale: only a timed replay uses it; set timed_replay: true, or remove time_scale"
        return None


SESSION_GENERATORS: dict[str, type] = {"synthetic": SyntheticSessions, "trace": TraceSessions}


def names_a_directory(path: str) -> bool:
    """Whether a path names a directory by its text alone (`.`, `..`, `~`, `traces/`). Whether an
    existing name is a directory depends on the machine: the runner checks that when it reads it."""
    return path.endswith("/") or path == "~" or PurePath(path).name in ("", ".", "..")


# ---------------------------------------------------------------- evaluation

# The names an SLO may use come from the field table (records.FIELDS). mypy sees a plain
# str; at run time the Literal lets the config schema reject any other name.
if TYPE_CHECKING:
    SLOMetric = str
else:
    SLOMetric = Literal[SLO_METRICS]


@dataclass(frozen=True)
class SLOConfig:
    name: str
    metric: SLOMetric
    value: float = spec(gt=0, doc="threshold in seconds")
    percentile: float = spec(default=0.99, gt=0, le=1)
    type: Literal["constant"] = "constant"

    def check(self) -> str | None:
        # Here, not spec(nonempty=...): a required field cannot be a spec() call (mypy sees a default).
        if not self.name.strip():
            return f"name: {self.name!r} is not allowed; give every SLO a name (it labels its verdict)"
        return None

    @property
    def canonical_metric(self) -> str:
        return SLO_ALIASES.get(self.metric, self.metric)


@dataclass(frozen=True)
class HealthThresholds:
    """Bounds of the health checks (docs/metrics.md, "Health checks")."""

    max_error_rate: float = spec(default=0.01, ge=0, le=1, doc="errored / requests")
    max_timeouts: int = spec(default=0, ge=0, doc="requests that may time out")
    min_rate_tolerance: float = spec(
        default=0.05, ge=0, doc="session dispatch rate: relative band never tighter than this"
    )
    max_concurrency_error: float = spec(default=0.05, ge=0, doc="mean in-flight sessions vs target")
    max_lateness_p99_s: float = spec(default=0.010, ge=0, doc="intra-session arrival lateness p99")
    max_delay_p99_s: float = spec(default=0.010, ge=0, doc="each lifecycle delay p99")
    min_prompts_on_target: float = spec(default=0.99, ge=0, le=1, doc="fraction of prompts on target")
    max_output_off_fraction: float = spec(
        default=0.01, ge=0, le=1, doc="replies shorter (or longer) than requested"
    )
    max_output_token_difference: float = spec(
        default=0.05, ge=0, doc="output tokens: mean |client tokenizer - server usage| / server usage"
    )
    # Not lower: a chat template every request shares fills at least one 16-token KV block, so short
    # prompts show 10-30% hits beyond what the config shares; a repeat of the same prompts shows ~100%.
    max_unexpected_cache_hit_fraction: float = spec(
        default=0.5, ge=0, le=1, doc="server prefix-cache hit fraction - the config's expected sharing"
    )


@dataclass(frozen=True)
class PerformanceEvaluator:
    type: Literal["performance"] = "performance"
    target_channels: list[ChannelName] = spec(
        factory=lambda: ["text"], doc="channels whose requests are evaluated (text is the only one)"
    )
    slos: list[SLOConfig] = spec(factory=list)
    health: HealthThresholds = spec(factory=HealthThresholds)


EVALUATORS: dict[str, type] = {"performance": PerformanceEvaluator}

# ---------------------------------------------------------------- runtime, recording, server, wandb


@dataclass(frozen=True)
class ServerMetricsConfig:
    """The server's own metrics (Prometheus text), scraped by the recorder during the run."""

    enabled: Literal["auto", True, False] = spec(
        default="auto", doc="auto: on when the url answers in Prometheus text format at start"
    )
    url: str | None = spec(default=None, doc="default: /metrics on the api_base host")
    interval_seconds: float = seconds(default=1.0, gt=0)


@dataclass(frozen=True)
class RuntimeConfig:
    benchmark_timeout: float = seconds(default=300.0, doc="seconds; <= 0 disables")
    max_sessions: int = spec(default=-1, ge=-1, doc="-1 = unlimited")
    max_requests: int = spec(default=-1, ge=-1, doc="-1 = unlimited")
    warmup_sessions: int = spec(default=0, ge=0)
    # -1 is a sentinel, not the low end of a range: -0.5 was taken as -1 without a word.
    post_timeout_grace_seconds: float = seconds(
        default=-1.0, ge=0, also=(-1,), doc="-1 waits for in-flight requests; N waits N s then cancels"
    )
    num_drivers: Literal["auto"] | int = spec(
        default=1, ge=1, doc="driver processes sharing the schedule; auto: as the load needs, up to the cores"
    )
    ray_address: str | None = spec(
        default=None, doc="HOST:PORT of a Ray cluster (or auto) to run the drivers on; needs veeksha[ray]"
    )


@dataclass(frozen=True)
class TraceRecorderConfig:
    enabled: bool = True
    include_content: bool = False


@dataclass(frozen=True)
class PreciseTiming:
    """Exact stream timing instead of the batching model (runner/simserver/precise.py): chunk k of
    each stream is due at its arrival + ttft + k * itl, on an absolute schedule, so the truth a client
    measures against is known; /sim/stats reports how late the server actually wrote."""

    ttft: float = seconds(default=0.05, ge=0, doc="seconds from a request's arrival to its first chunk")
    itl: float = seconds(default=0.01, ge=0, doc="seconds between chunks")


@dataclass(frozen=True)
class SimulatedServerConfig:
    type: Literal["simulated"] = "simulated"
    model: str = "veeksha-sim"
    host: str = "127.0.0.1"
    port: int = spec(default=0, ge=0, le=65535, doc="0 = a free port")
    per_token_prefill_time: float = seconds(default=2e-5, ge=0)
    decode_step_base: float = seconds(default=0.008, ge=0)
    decode_step_per_seq: float = seconds(default=0.0002, ge=0)
    max_batch_size: int = spec(default=64, ge=1)
    max_kv_tokens: int = spec(default=200_000, ge=1)
    tokens_per_chunk: int = spec(default=1, ge=1)
    default_max_tokens: int = spec(default=256, ge=1)
    per_token_eos_probability: float = spec(default=0.0, ge=0, le=1)
    honor_ignore_eos: bool = True
    error_rate: float = spec(default=0.0, ge=0, le=1)
    # Its random streams (error_rate, eos, reasoning lengths) derive from this by name. In a run, when
    # not given, it is the run's root seed, as every random stream's is (config.md; BenchmarkConfig).
    seed: int | None = spec(default=None, doc="default: the run's root seed (standalone: 42)")
    # Chat only: this many reasoning tokens stream before the answer (a number or a length
    # generator), in the delta field `reasoning_field`; usage reports them as reasoning_tokens. As on
    # vLLM they count toward max_tokens, and at least one answer token follows them.
    reasoning_tokens: LengthGen = gen_field(value=0)
    reasoning_field: Literal["reasoning_content", "reasoning"] = "reasoning_content"
    # Prefill costs only the prompt tokens not already cached (runner/simserver/prefix_cache.py).
    prefix_cache: bool = True
    precise: PreciseTiming | None = spec(default=None, doc="exact TTFT and ITL, no batching model")


@dataclass(frozen=True)
class CommandServerConfig:
    type: Literal["command"] = "command"
    command: list[str] = spec(factory=list)
    ready_url: str = ""
    api_base: str | None = None
    env: dict[str, str] = spec(factory=dict)
    ready_timeout: float = seconds(default=600.0, gt=0)

    def check(self) -> str | None:
        if not self.command:
            return "command: give the server command as a list, e.g. [vllm, serve, MODEL]"
        return None if self.ready_url else "ready_url: required (e.g. http://127.0.0.1:8000/health)"


SERVERS: dict[str, type] = {"simulated": SimulatedServerConfig, "command": CommandServerConfig}


@dataclass(frozen=True)
class WandbConfig:
    enabled: bool = False
    # Uploader precedence: this section < WANDB_* environment < veeksha-upload's flags.
    project: str | None = spec(
        default=None, doc="W&B project; overridden by env WANDB_PROJECT and --project; default 'veeksha'"
    )
    entity: str | None = spec(
        default=None,
        doc="W&B entity; overridden by env WANDB_ENTITY and --entity; default: the API key's default entity",
    )
    group: str | None = spec(
        default=None,
        doc="W&B run group; overridden by env WANDB_RUN_GROUP and --group; a sweep's or search's runs "
        "are grouped by its folder when none is set",
    )
    run_name: str | None = spec(
        default=None,
        doc="W&B run name; overridden by env WANDB_NAME and --run-name; default: the run directory's name",
    )
    tags: list[str] = spec(
        factory=list,
        doc="W&B tags; overridden by env WANDB_TAGS (comma-separated) and --tag: replaced, not merged",
    )
    notes: str | None = spec(default=None, doc="W&B run notes; overridden by env WANDB_NOTES and --notes")
    mode: Literal["online", "offline", "disabled"] | None = spec(
        default=None,
        doc="W&B mode; overridden by env WANDB_MODE, then by env WANDB_DISABLED=true ('disabled'), then by "
        "--mode; default 'online'",
    )
    log_artifacts: bool = True


# ---------------------------------------------------------------- top level


# The root seed when none is given; also a standalone simulated server's, which has no run.
DEFAULT_SEED = 42


def check_seed_offsets(seed: int, count: int, *, key: str, given: str) -> None:
    """Runs that each draw their own sessions take seed + i, i < `count` (a sweep's runs against an
    endpoint already up, a capacity search's attempts): the last one's seed must be one a config takes
    (64 bits), or its config.yml is refused when read back (its own evaluation, `veeksha-run
    evaluate`). Refused before anything starts (exit 2), not wrapped round: each run's config.yml
    keeps saying seed + i, and after 2**63-1 a wrapped seed would be -2**63, unrelated to the rest.
    `key` names the seed as the config file has it; `given` the count (`max_iterations 3`)."""
    highest = INT64_MAX - (count - 1)
    if seed > highest:
        raise ConfigError(
            f"config error at {key}: {seed} is not allowed with {given} (each draws its own sessions "
            f"with seed + its index, and the last would not fit in 64 bits); use a seed <= {highest}"
        )


def home_expanded(path: str) -> str:
    """`path` with a leading `~` or `~user` expanded: `output_dir: ~/runs` made a directory named `~`.
    Left as given when the user has no home here (the config's check says so, home_problem), and
    when it starts with no `~` (Path("") would be ".": an empty one is refused as such)."""
    if not path.startswith("~") or home_problem(path):
        return path
    return str(Path(path).expanduser())


class OutputDirHome:
    """Expands `~` in `output_dir` as the config is made, so config.yml, the run directories and every
    reader of the config see one path. A `~user` without a home here is kept as written: a new run's
    error (admission_check), but a config.yml read back on another machine still reads."""

    output_dir: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", home_expanded(self.output_dir))

    def output_dir_problem(self) -> str | None:
        problem = home_problem(self.output_dir)
        return f"output_dir: {problem}" if problem else None


@dataclass(frozen=True)
class BenchmarkConfig(OutputDirHome):
    seed: int = DEFAULT_SEED
    output_dir: str = "benchmark_output"
    client: ClientConfig = spec(factory=ClientConfig)
    traffic_scheduler: RateTraffic | ConcurrentTraffic = spec(
        factory=RateTraffic, variants=TRAFFIC_SCHEDULERS
    )
    session_generator: SyntheticSessions | TraceSessions = spec(
        factory=SyntheticSessions, variants=SESSION_GENERATORS
    )
    evaluators: list[PerformanceEvaluator] = spec(
        factory=lambda: [PerformanceEvaluator()], variants=EVALUATORS
    )
    runtime: RuntimeConfig = spec(factory=RuntimeConfig)
    server_metrics: ServerMetricsConfig = spec(factory=ServerMetricsConfig)
    trace_recorder: TraceRecorderConfig = spec(factory=TraceRecorderConfig)
    server: SimulatedServerConfig | CommandServerConfig | None = spec(default=None, variants=SERVERS)
    wandb: WandbConfig = spec(factory=WandbConfig)

    @property
    def slos(self) -> list[SLOConfig]:
        return [slo for ev in self.evaluators for slo in ev.slos]

    def admission_check(self) -> str | None:
        return self.output_dir_problem()


@dataclass(frozen=True)
class CapacitySearchConfig(OutputDirHome):
    benchmark_config: BenchmarkConfig
    output_dir: str = "capacity_search_output"
    start_value: float = spec(default=5.0, gt=0)
    max_value: float = spec(default=100.0, gt=0)
    expansion_factor: float = spec(default=2.0, gt=1)
    max_iterations: int = spec(default=20, ge=1)
    precision: int = spec(default=2, ge=0, le=6)
    max_error_rate: float | None = spec(
        default=0.05, ge=0, le=1, doc="an attempt with more errors fails; null disables"
    )

    def admission_check(self) -> str | None:
        """A new search only (schema.admitting): a written config.yml read back on another machine
        may name a `~user` it has not, or a max_value from before the limit."""
        if problem := self.output_dir_problem():
            return problem
        concurrent = isinstance(self.benchmark_config.traffic_scheduler, ConcurrentTraffic)
        if concurrent and self.max_value > MAX_CONCURRENT_SESSIONS:
            return (
                f"max_value: {self.max_value} is not allowed; a concurrency search needs <= "
                f"{MAX_CONCURRENT_SESSIONS} (the most target_concurrent_sessions a config takes)"
            )
        return None

    def check(self) -> str | None:
        if self.start_value > self.max_value:
            return f"start_value ({self.start_value}) must be <= max_value ({self.max_value})"
        off_grid = self._off_grid()
        if off_grid:
            return off_grid
        sg = self.benchmark_config.session_generator
        if isinstance(sg, TraceSessions) and sg.timed_replay:
            return (
                "benchmark_config.session_generator.timed_replay: a capacity search varies the arrival "
                "rate or concurrency, and a timed replay's load is its trace's timestamps; set "
                "timed_replay: false, or sweep time_scale (!expand) instead"
            )
        return None

    def _off_grid(self) -> str | None:
        """A value below the search's grid: the search probed the grid's first value instead, above
        max_value (a concurrency of 1 for max_value 0.5, reported as the best). The grid is whole
        numbers of sessions, or rates of `precision` decimals (runner/capacity_search.py rounder),
        from its floor (search_floor). (A concurrency above what a config takes: admission_check.)"""
        concurrent = isinstance(self.benchmark_config.traffic_scheduler, ConcurrentTraffic)
        grid = "a concurrency search" if concurrent else f"a rate search at precision {self.precision}"
        floor = search_floor(concurrent, self.precision)
        for key in ("max_value", "start_value"):  # max_value first: it bounds the whole search
            value = getattr(self, key)
            if value < floor:
                return f"{key}: {value} is not allowed; {grid} needs >= {floor:g}"
        return None


def search_floor(concurrent: bool, precision: int) -> float:
    """The smallest load a capacity search probes: one session, or the smallest rate on its grid of
    `precision` decimals that a config takes (MIN_PER_SECOND: at precision 6, 2e-06, not 1e-06)."""
    if concurrent:
        return 1
    scale = 10.0**precision
    # Rounded first: MIN_PER_SECOND * scale is not exact in binary, and ceil would step past it.
    return math.ceil(round(MIN_PER_SECOND * scale, 6)) / scale


def run_server(cfg: BenchmarkConfig) -> SimulatedServerConfig | CommandServerConfig | None:
    """The server a run starts: a simulated one without its own seed takes the run's root seed, so
    its draws (error_rate, eos, reasoning lengths) follow `seed` like every other random stream, also
    a capacity search's seed + i. config.yml keeps `server.seed` as given."""
    server = cfg.server
    if isinstance(server, SimulatedServerConfig) and server.seed is None:
        return replace(server, seed=cfg.seed)
    return server
