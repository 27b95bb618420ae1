"""Checks on a built config that no single key's type can make (config.md, "Additions").

`schema.build` checks each key on its own. These look at keys together, or at what the client will
put on the wire: the run has a way to end, `client.api_base` (and a command server's `ready_url` and
`api_base`) is a URL the client can use, every header can be sent, no request parameter replaces a
field the client sets, a command server can be started with its command and environment, and every
SLO has a name of its own and a metric the run measures (tbc and tpot need a stream). They run after
the environment fallbacks, so `OPENAI_API_BASE` is checked too. Whether the host resolves depends on
the machine, not the text: the runner checks that (runner/preflight.py), also before anything starts.
"""

from __future__ import annotations

import importlib.util
import os
import string
from urllib.parse import urlsplit

from veeksha.shared.config import (
    BenchmarkConfig,
    ClientConfig,
    CommandServerConfig,
    ConcurrentTraffic,
    SLOConfig,
    TraceSessions,
)
from veeksha.shared.errors import ConfigError
from veeksha.shared.records import summary_key_part
from veeksha.shared.redact import is_plain_header, url_for_message

# RFC 9110 "token": the characters a header name may have.
HEADER_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
# CR and LF would end the header line (and let a value inject headers); NUL ends C strings.
FORBIDDEN_IN_HEADER_VALUES = ("\r", "\n", "\0")

# The body fields the client sets itself (runner/driver/http/openai.py, RequestBuilder), each with
# where its value comes from. additional_sampling_params is merged into the body last: a field of
# the same name there replaced the client's value unseen, and the records described a request the
# server never got (stream: false recorded as streamed, another model, another prompt).
OUTPUT_LENGTH_SOURCE = "session_generator output_spec (client.max_tokens_param names the field)"
CLIENT_BODY_FIELDS: dict[str, str] = {
    "model": "client.model",
    "messages": "the session generator",
    "prompt": "the session generator",
    "stream": "client.stream",
    "stream_options": "client.include_usage",
    "ignore_eos": "client.ignore_eos",
    # Both names, for either client type: a server that takes both would get two output lengths.
    "max_tokens": OUTPUT_LENGTH_SOURCE,
    "max_completion_tokens": OUTPUT_LENGTH_SOURCE,
}
# The names of the output-length fields are configurable; they must not be one of the other fields.
TOKEN_PARAM_KEYS = ("max_tokens_param", "min_tokens_param")


def check_benchmark_config(cfg: BenchmarkConfig, prefix: str = "", api_base_source: str = "") -> None:
    """Raise ConfigError for the first problem; `prefix` is the key path of `cfg` in its file
    (`benchmark_config.` in a capacity search), `api_base_source` names an env fallback."""
    check_stopping_condition(cfg, prefix)
    # A capacity search's benchmark config (prefix benchmark_config.) has its concurrency set per
    # attempt: runner/capacity_search.check_search checks the drivers against the values it probes.
    check_drivers(cfg, prefix, sessions_searched=prefix == "benchmark_config.")
    check_timed_replay(cfg, prefix)
    if uses_client_api_base(cfg) and cfg.client.api_base:
        check_api_base(cfg.client.api_base, f"{prefix}client.api_base{api_base_source}")
    server = cfg.server
    if isinstance(server, CommandServerConfig):
        check_api_base(server.ready_url, f"{prefix}server.ready_url")
        if server.api_base is not None:
            check_api_base(server.api_base, f"{prefix}server.api_base")
    if cfg.server_metrics.url is not None:
        check_api_base(cfg.server_metrics.url, f"{prefix}server_metrics.url")
    check_headers(cfg.client, f"{prefix}client")
    check_request_params(cfg.client, f"{prefix}client")
    if isinstance(server, CommandServerConfig):
        check_server_process(server, f"{prefix}server")
    check_evaluator_names(cfg, prefix)
    check_streamed_slos(cfg, prefix)


def check_stopping_condition(cfg: BenchmarkConfig, prefix: str = "") -> None:
    runtime = cfg.runtime
    if runtime.benchmark_timeout > 0 or runtime.max_sessions >= 0 or runtime.max_requests >= 0:
        return
    sessions = cfg.session_generator
    if isinstance(sessions, TraceSessions) and not sessions.wrap:
        return  # a trace that does not start over ends by itself
    raise ConfigError(
        f"config error at {prefix}runtime.benchmark_timeout: {runtime.benchmark_timeout!r} is not allowed "
        "while runtime.max_sessions and runtime.max_requests are -1 (the run could never end); "
        "use a timeout > 0, or set max_sessions or max_requests >= 0"
    )


def check_timed_replay(cfg: BenchmarkConfig, prefix: str = "") -> None:
    """A timed replay sends each session at its trace timestamp: only rate traffic keeps a schedule,
    concurrent traffic would ignore the timestamps (and time_scale) without a word."""
    sg, concurrent = cfg.session_generator, isinstance(cfg.traffic_scheduler, ConcurrentTraffic)
    if isinstance(sg, TraceSessions) and sg.timed_replay and concurrent:
        raise ConfigError(
            f"config error at {prefix}session_generator.timed_replay: true is not allowed with "
            "traffic_scheduler.type concurrent (it sends a session whenever a slot frees, never at the "
            "trace's timestamps); use traffic_scheduler.type rate, or timed_replay: false"
        )


def check_drivers(cfg: BenchmarkConfig, prefix: str = "", sessions_searched: bool = False) -> None:
    """Every driver gets a share of the run's session slots: a share of 0 would be no session to run
    (concurrent traffic) or no cap at all (rate traffic's max_concurrent_sessions). With
    `sessions_searched`, a concurrent config's sessions are a placeholder the search replaces."""
    n = cfg.runtime.num_drivers
    searched = sessions_searched and isinstance(cfg.traffic_scheduler, ConcurrentTraffic)
    slots = None if searched else session_slots(cfg)
    if slots is not None and isinstance(n, int) and n > slots[1]:
        name, count = slots
        raise ConfigError(
            f"config error at {prefix}runtime.num_drivers: {n} is not allowed with "
            f"traffic_scheduler.{name} {count} (the drivers share those sessions, and a driver would "
            "get none); use at most that many drivers, or auto"
        )
    address = cfg.runtime.ray_address
    if address is not None and importlib.util.find_spec("ray") is None:
        raise ConfigError(
            f"config error at {prefix}runtime.ray_address: Ray is not installed; "
            "pip install 'veeksha[ray]' (on this machine and every node), or remove ray_address"
        )
    if address is not None and address != "auto" and ray_host_port(address) is None:
        raise ConfigError(
            f"config error at {prefix}runtime.ray_address: {address!r} is not allowed; "
            "expected HOST:PORT of the Ray head (e.g. 10.0.0.5:6379), ray://HOST:PORT or auto"
        )


def session_slots(cfg: BenchmarkConfig) -> tuple[str, int] | None:
    """The run's concurrent-session limit the drivers split between them: (its key, its value)."""
    traffic = cfg.traffic_scheduler
    if isinstance(traffic, ConcurrentTraffic):
        return "target_concurrent_sessions", traffic.target_concurrent_sessions
    if traffic.max_concurrent_sessions:
        return "max_concurrent_sessions", traffic.max_concurrent_sessions
    return None


def ray_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of runtime.ray_address `HOST:PORT` or `ray://HOST:PORT`; None when it is not one."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in address):
        return None
    return host.strip("[]"), int(port)


def uses_client_api_base(cfg: BenchmarkConfig) -> bool:
    """The one rule for where requests go. client.api_base, unless the server section names the URL:
    a simulated server always does, a command server by its api_base, or by its ready_url when no
    client.api_base is set (runner/benchmark.py resolves it once the server runs; preflight and
    server_launcher.planned_api_host read the same rule before)."""
    server = cfg.server
    if server is None:
        return True
    if isinstance(server, CommandServerConfig):
        return server.api_base is None and bool(cfg.client.api_base)
    return False


def check_api_base(url: str, key_path: str) -> None:
    def fail(allowed: str) -> ConfigError:
        return ConfigError(f"config error at {key_path}: {url_for_message(url)!r} is not allowed; {allowed}")

    if any(c.isspace() or not c.isprintable() for c in url):
        raise fail("a URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise fail("expected a URL such as http://localhost:8000/v1") from None
    if parts.scheme not in ("http", "https"):
        raise fail("expected an http:// or https:// URL, e.g. http://localhost:8000/v1")
    if not parts.hostname:
        raise fail("the URL has no host, e.g. http://localhost:8000/v1")
    try:
        port = parts.port
    except ValueError:
        port = 0  # not a number, or beyond 65535
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise fail("the port must be a number from 1 to 65535 (or left out)")


def check_headers(client: ClientConfig, key_path: str) -> None:
    """Header names are HTTP tokens; values (and the API key, sent as Authorization) are latin-1
    without line breaks. Secret values are never shown in the error."""
    for name, value in client.headers.items():
        where = f"{key_path}.headers.{name}"
        if not name or not set(name) <= HEADER_NAME_CHARS:
            raise ConfigError(
                f"config error at {where}: header name {name!r} is not allowed; "
                "use letters, digits and !#$%&'*+-.^_`|~ only"
            )
        problem = _header_value_problem(value)
        if problem:
            shown = repr(value) if is_plain_header(name) else "the value"
            raise ConfigError(f"config error at {where}: {shown} is not allowed; {problem}")
    if client.api_key:
        problem = _header_value_problem(client.api_key.reveal())
        if problem:
            raise ConfigError(f"config error at {key_path}.api_key: the key is not allowed; {problem}")


def _header_value_problem(value: str) -> str | None:
    if any(c in value for c in FORBIDDEN_IN_HEADER_VALUES):
        return "a header value has no line breaks (CR, LF) or NUL characters"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "a header value holds latin-1 characters only"
    return None


def client_body_fields(client: ClientConfig) -> dict[str, str]:
    """CLIENT_BODY_FIELDS this client sends (stream_options only with usage asked for in a stream,
    ignore_eos only when true: a parameter may add what the client leaves out, e.g. vLLM's
    stream_options.continuous_usage_stats with client.include_usage: false), plus its own
    output-length field names."""
    fields = dict(CLIENT_BODY_FIELDS)
    if not (client.stream and client.include_usage):
        del fields["stream_options"]
    if not client.ignore_eos:
        del fields["ignore_eos"]
    if client.max_tokens_param:
        fields[client.max_tokens_param] = OUTPUT_LENGTH_SOURCE
    if client.min_tokens_param:
        fields[client.min_tokens_param] = "session_generator output_spec (client.min_tokens_param)"
    return fields


def check_request_params(client: ClientConfig, key_path: str) -> None:
    """No request parameter replaces a body field the client sets (CLIENT_BODY_FIELDS), and the
    output-length fields are not named after one of them either."""
    for key in TOKEN_PARAM_KEYS:
        name = getattr(client, key)
        if name in CLIENT_BODY_FIELDS and CLIENT_BODY_FIELDS[name] != OUTPUT_LENGTH_SOURCE:
            raise ConfigError(
                f"config error at {key_path}.{key}: {name!r} is not allowed; the client sets that field "
                f"itself (from {CLIENT_BODY_FIELDS[name]}); name the output-length field, e.g. max_tokens"
            )
    owned = client_body_fields(client)
    for name in client.additional_sampling_params:
        if name in owned:
            raise ConfigError(
                f"config error at {key_path}.additional_sampling_params.{name}: not allowed; the client "
                f"sets {name!r} itself (from {owned[name]}), and this would replace it unseen; "
                "remove it and set it there"
            )


def check_server_process(server: CommandServerConfig, key_path: str) -> None:
    """What the operating system refuses to start a process with (Popen's ValueError came after the
    run directory was made). Nothing is shown: a command line and an environment hold secrets."""
    for i, arg in enumerate(server.command):
        problem = _os_string_problem(arg)
        if problem:
            raise _os_string_error(f"{key_path}.command.{i}", "argument", problem)
    for name, value in server.env.items():
        name_problem = _env_name_problem(name)
        if name_problem:
            raise ConfigError(
                f"config error at {key_path}.env: {name_problem} is not allowed (names are not shown: one "
                "may hold a secret); write each variable as NAME: value, e.g. HF_TOKEN: ..."
            )
        problem = _os_string_problem(value)
        if problem:
            raise _os_string_error(f"{key_path}.env.{name}", "value", problem)


def _env_name_problem(name: str) -> str | None:
    if not name.strip():
        return "an empty variable name"
    if "=" in name:  # `NAME=value` written as a name: an environment cannot hold it
        return "a variable name with '='"
    problem = _os_string_problem(name)
    return f"a variable name with {problem}" if problem else None


def _os_string_problem(text: str) -> str | None:
    """What a command argument or environment string holds that no process can be given, or None."""
    if "\0" in text:
        return "a NUL character"  # the operating system's strings end at NUL
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return "a character the file system encoding cannot hold"
    return None


def _os_string_error(key_path: str, what: str, problem: str) -> ConfigError:
    return ConfigError(
        f"config error at {key_path}: {problem} is not allowed (the {what} is not shown: it may hold a "
        "secret); the operating system cannot pass it to the server process, so remove it"
    )


def check_evaluator_names(cfg: BenchmarkConfig, prefix: str = "") -> None:
    """SLO names label results: unique across every evaluator, also as W&B summary keys
    (summary_key_part). Health takes the first evaluator's thresholds: a later one with other
    thresholds would be ignored unseen."""
    first = cfg.evaluators[0] if cfg.evaluators else None
    for i, evaluator in enumerate(cfg.evaluators[1:], start=1):
        if first is not None and evaluator.health != first.health:
            raise ConfigError(
                f"config error at {prefix}evaluators.{i}.health: only the first evaluator's health "
                "thresholds are used; set them there (and remove them here)"
            )
    where = [(i, j) for i, ev in enumerate(cfg.evaluators) for j in range(len(ev.slos))]
    _check_slo_names(cfg.slos, [f"{prefix}evaluators.{i}.slos.{j}" for i, j in where])


# SLO metrics measured between chunks: a reply that is not streamed is one chunk, with no gaps (tbc)
# and a null tpot (docs/metrics.md), so the SLO has no samples and fails in slo_results, while every
# request passes it for goodput.
STREAMED_ONLY_METRICS = frozenset({"tbc", "tpot", "tpot_answer"})


def check_streamed_slos(cfg: BenchmarkConfig, prefix: str = "") -> None:
    """No SLO on a metric only a stream measures when the run does not stream (client.stream is one
    setting for the whole run: no request parameter may change it, check_request_params)."""
    if cfg.client.stream:
        return
    for i, evaluator in enumerate(cfg.evaluators):
        for j, slo in enumerate(evaluator.slos):
            if slo.canonical_metric in STREAMED_ONLY_METRICS:
                raise ConfigError(
                    f"config error at {prefix}evaluators.{i}.slos.{j}.metric: {slo.metric} is not allowed "
                    f"with {prefix}client.stream false (a reply that is not streamed is one chunk: it has "
                    "no gaps and no tpot, so the SLO could never be met); set "
                    f"{prefix}client.stream: true, or remove the SLO"
                )


def _check_slo_names(slos: list[SLOConfig], key_paths: list[str]) -> None:
    first: dict[str, str] = {}  # W&B key part -> the name that took it
    for slo, key_path in zip(slos, key_paths, strict=True):
        part = summary_key_part(slo.name)
        if part in first:
            raise ConfigError(
                f"config error at {key_path}.name: {slo.name!r} is not allowed; SLO names must be "
                f"unique, and {first[part]!r} comes first (W&B keys read '/' as '_'); rename one"
            )
        first[part] = slo.name
