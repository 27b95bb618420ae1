"""Bad input is refused before anything starts (config.md "Additions"; issue 7, section 4).

Every case below is a complete config that is wrong in exactly one way. Each one must end with exit
status 2 and a single stderr line `veeksha-run: ...` that names the key path (or, for YAML-level
problems, the file and line). Nothing may happen first: no file or directory appears in the working
directory (so no run directory), the command server never runs (it would write `server-started`),
and a loopback listener that every URL in the config points at receives no connection.

The bulk runs in-process through `veeksha.runner.cli.main`; a representative subset also runs as a
real `veeksha-run` process.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from veeksha.runner.cli import main

from tests.runner.helpers import run_cli

CONFIG = "c.veeksha.yml"
# `{api}` becomes the listener's URL. The command server would leave `server-started` behind, and its
# readiness check would connect to the listener.
CLIENT = "client: {api_base: '{api}', model: m}\n"
SERVER = (
    "server: {type: command, command: ['{py}', -c, \"open('server-started', 'w')\"], "
    "ready_url: '{api}/health', ready_timeout: 5}\n"
)
RUNTIME = "runtime: {max_requests: 1, benchmark_timeout: 5}\n"
GOOD = CLIENT + SERVER + RUNTIME
GOOD_SEARCH = (
    "benchmark_config:\n"
    "  client: {api_base: '{api}', model: m}\n"
    "  server: {type: command, command: ['{py}', -c, \"open('server-started', 'w')\"], "
    "ready_url: '{api}/health', ready_timeout: 5}\n"
    "  runtime: {max_requests: 1, benchmark_timeout: 5}\n"
)


@dataclass(frozen=True)
class Case:
    id: str
    config: str  # the file's text: `{api}` is the listener's URL, `{py}` this Python
    expected: str  # part of the one error line: the key path (or file) and what is wrong
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, str], ...] = ()  # more files next to the config (for !include)
    capacity_search: bool = False  # run `veeksha-run capacity-search` instead of a benchmark


def laughs(levels: int = 9) -> str:
    """The "billion laughs" alias bomb: under 1 KB of text, 9**9 values when expanded."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def expand_bomb() -> str:
    """Five keys sharing one 10-value !expand through an alias: a sweep of 100,000 runs."""
    ten = "&e !expand [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
    return (
        f"seed: {ten}\n"
        "client: {api_base: '{api}', model: m, request_timeout: *e, connect_timeout: *e}\n"
        "runtime: {max_requests: *e, warmup_sessions: *e}\n"
    )


def client(keys: str) -> str:
    """A good config whose client section has `keys` added."""
    return SERVER + RUNTIME + "client: {api_base: '{api}', model: m, " + keys + "}\n"


# A tokenizer.json that loads, then fails to encode: its WordLevel unk_token is not in its vocabulary.
UNK_LESS_TOKENIZER = (
    '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,'
    '"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,'
    '"model":{"type":"WordLevel","vocab":{"time":0},"unk_token":"[UNK]"}}'
)

ONE_KB_LIST = "x: [" + ", ".join(["1"] * 1000) + "]\n"
BIG_INT = "9" * 5000

STOPPING = [
    Case("timeout-0-no-limit", CLIENT + "runtime: {benchmark_timeout: 0}\n", "runtime.benchmark_timeout: 0"),
    Case("timeout-negative", CLIENT + "runtime: {benchmark_timeout: -5}\n", "runtime.benchmark_timeout: -5"),
    Case(
        "timeout-0-explicit-unlimited",
        CLIENT + "runtime: {benchmark_timeout: 0, max_sessions: -1, max_requests: -1}\n",
        "could never end",
    ),
    Case("timeout-nan", CLIENT + "runtime: {benchmark_timeout: .nan}\n", "runtime.benchmark_timeout: nan"),
    Case("timeout-inf", CLIENT + "runtime: {benchmark_timeout: .inf}\n", "runtime.benchmark_timeout: inf"),
    Case("timeout-minus-inf", CLIENT + "runtime: {benchmark_timeout: -.inf}\n", "runtime.benchmark_timeout"),
    Case(
        "timeout-0-wrapping-trace",
        CLIENT + "runtime: {benchmark_timeout: 0}\nsession_generator: {type: trace, path: t.jsonl}\n",
        "runtime.benchmark_timeout: 0",
    ),
    Case(
        "timeout-flag-minus-1", CLIENT, "runtime.benchmark_timeout: -1", ("--runtime.benchmark_timeout", "-1")
    ),
    Case(
        "search-timeout-0",
        "benchmark_config: {client: {api_base: '{api}'}, runtime: {benchmark_timeout: 0}}\n",
        "benchmark_config.runtime.benchmark_timeout: 0",
        capacity_search=True,
    ),
]

NUMBERS = [
    Case("seed-nan", GOOD + "seed: .nan\n", "seed: nan is not allowed; NaN and infinity"),
    Case("seed-inf", GOOD + "seed: .inf\n", "seed: inf is not allowed"),
    Case("seed-2-to-64", GOOD + "seed: 18446744073709551616\n", "seed: 18446744073709551616"),
    Case("seed-below-int64", GOOD + "seed: -9223372036854775809\n", "seed: -9223372036854775809"),
    Case("seed-whole-float-1e30", GOOD + "seed: 1.0e+30\n", "integers must fit in 64 bits"),
    Case("seed-5000-digits", GOOD + f"seed: {BIG_INT}\n", f"{CONFIG} line 4: an integer of 5000"),
    Case("seed-expand-nan", GOOD + "seed: !expand [1, .nan]\n", "seed: nan"),
    Case(
        "poisson-rate-nan",
        GOOD + "traffic_scheduler: {type: rate, interval_generator: {type: poisson, arrival_rate: .nan}}\n",
        "traffic_scheduler.interval_generator.arrival_rate: nan",
    ),
    Case(
        "poisson-rate-inf",
        GOOD + "traffic_scheduler: {type: rate, interval_generator: {type: poisson, arrival_rate: .inf}}\n",
        "traffic_scheduler.interval_generator.arrival_rate: inf",
    ),
    Case(
        "gamma-cv-nan",
        GOOD + "traffic_scheduler: {interval_generator: {type: gamma, arrival_rate: 1, cv: .nan}}\n",
        "traffic_scheduler.interval_generator.cv: nan",
    ),
    Case(
        "fixed-interval-inf",
        GOOD + "traffic_scheduler: {interval_generator: {type: fixed, interval: .inf}}\n",
        "traffic_scheduler.interval_generator.interval: inf",
    ),
    Case(
        "rate-flag-inf",
        GOOD,
        "traffic_scheduler.interval_generator.arrival_rate: inf",
        ("--traffic_scheduler.interval_generator.arrival_rate", ".inf"),
    ),
    Case(
        "rampup-inf",
        GOOD + "traffic_scheduler: {type: concurrent, rampup_seconds: .inf}\n",
        "traffic_scheduler.rampup_seconds: inf",
    ),
    Case(
        "concurrency-1e20",
        GOOD + "traffic_scheduler: {type: concurrent, target_concurrent_sessions: 1.0e+20}\n",
        "traffic_scheduler.target_concurrent_sessions",
    ),
    Case(
        "max-concurrent-2-to-63",
        GOOD + "traffic_scheduler: {type: rate, max_concurrent_sessions: 9223372036854775808}\n",
        "traffic_scheduler.max_concurrent_sessions",
    ),
    Case(
        "max-sessions-2-to-64",
        CLIENT + "runtime: {max_sessions: 18446744073709551616}\n",
        "runtime.max_sessions",
    ),
    Case("max-requests-nan", CLIENT + "runtime: {max_requests: .nan}\n", "runtime.max_requests: nan"),
    Case("max-requests-1e400", CLIENT + "runtime: {max_requests: 1.0e+400}\n", "runtime.max_requests: inf"),
    Case(
        "warmup-inf",
        CLIENT + "runtime: {max_requests: 1, warmup_sessions: .inf}\n",
        "runtime.warmup_sessions",
    ),
    Case(
        "grace-nan",
        CLIENT + "runtime: {max_requests: 1, post_timeout_grace_seconds: .nan}\n",
        "runtime.post_timeout_grace_seconds: nan",
    ),
    Case(
        "request-timeout-nan",
        client("request_timeout: .nan"),
        "client.request_timeout: nan",
    ),
    Case(
        "connect-timeout-inf",
        client("connect_timeout: .inf"),
        "client.connect_timeout: inf",
    ),
    Case(
        "max-connections-2-to-63",
        client("max_connections: 9223372036854775808"),
        "client.max_connections",
    ),
    Case(
        "body-length-max-inf",
        GOOD + "session_generator: {channels: [{type: text, body_length_generator: {type: uniform, min: 1, "
        "max: .inf}}]}\n",
        "session_generator.channels.0.body_length_generator.max: inf",
    ),
    Case(
        # Its mean is small, its spread is not: 45% of its prompts would be cut to 10M tokens.
        "body-length-normal-tail",
        GOOD + "session_generator: {channels: [{type: text, body_length_generator: {type: normal, mean: 100, "
        "std: 100000000}}]}\n",
        "session_generator.channels.0.body_length_generator: 6e+08 is more than 10,000,000",
    ),
    Case(
        "output-length-nan",
        GOOD
        + "session_generator: {output_spec: {text: {output_length_generator: {type: fixed, value: .nan}}}}\n",
        "session_generator.output_spec.text.output_length_generator.value: nan",
    ),
    Case(
        "think-time-inf",
        GOOD + "session_generator: {session_graph: {type: linear, request_wait_generator: {type: fixed, "
        "value: .inf}}}\n",
        "session_generator.session_graph.request_wait_generator.value: inf",
    ),
    Case(
        "slo-value-nan",
        GOOD + "evaluators: [{type: performance, slos: [{name: a, metric: ttfc, value: .nan}]}]\n",
        "evaluators.0.slos.0.value: nan",
    ),
    Case(
        "slo-percentile-nan",
        GOOD
        + "evaluators: [{type: performance, slos: [{name: a, metric: ttfc, value: 1, percentile: .nan}]}]\n",
        "evaluators.0.slos.0.percentile: nan",
    ),
    Case(
        "sampling-param-nan",
        client("additional_sampling_params: {temperature: .nan}"),
        "client.additional_sampling_params.temperature: nan",
    ),
    Case(
        "sampling-param-nested-inf",
        client("additional_sampling_params: {stop_ids: [1, -.inf]}"),
        "client.additional_sampling_params.stop_ids.1: -inf",
    ),
    Case(
        "sampling-param-2-to-64",
        client("additional_sampling_params: {seed: 18446744073709551616}"),
        "client.additional_sampling_params.seed",
    ),
    Case(
        "simulated-port-nan",
        CLIENT + RUNTIME + "server: {type: simulated, port: .nan}\n",
        "server.port: nan",
    ),
    Case(
        "search-start-value-nan",
        GOOD_SEARCH + "start_value: .nan\n",
        "start_value: nan",
        capacity_search=True,
    ),
    Case("search-max-value-inf", GOOD_SEARCH + "max_value: .inf\n", "max_value: inf", capacity_search=True),
]


def api_base(url: str) -> str:
    """A config whose only fault is client.api_base (kept out of `{...}` so YAML quoting is plain)."""
    return SERVER + RUNTIME + f"client:\n  model: m\n  api_base: {url}\n"


API_BASE = [
    Case("no-scheme", api_base("localhost:8000/v1"), "client.api_base: 'localhost:8000/v1'"),
    Case("ip-no-scheme", api_base("127.0.0.1:8000"), "client.api_base: '127.0.0.1:8000'"),
    Case("ftp-scheme", api_base("ftp://127.0.0.1/v1"), "client.api_base: 'ftp://127.0.0.1/v1'"),
    Case("ws-scheme", api_base("ws://127.0.0.1:8000/v1"), "expected an http:// or https:// URL"),
    Case("file-scheme", api_base("file:///etc/passwd"), "client.api_base: 'file:///etc/passwd'"),
    Case(
        "metrics-url-scheme",
        api_base("{api}") + "server_metrics: {url: 'ftp://127.0.0.1/metrics'}\n",
        "server_metrics.url: 'ftp://127.0.0.1/metrics'",
    ),
    Case("no-host", api_base("http:///v1"), "client.api_base: 'http:///v1' is not allowed; the URL has no"),
    Case(
        "port-too-big", api_base("http://127.0.0.1:99999/v1"), "client.api_base: 'http://127.0.0.1:99999/v1'"
    ),
    Case("port-not-a-number", api_base("http://127.0.0.1:http/v1"), "the port must be a number"),
    Case("port-0", api_base("http://127.0.0.1:0/v1"), "client.api_base: 'http://127.0.0.1:0/v1'"),
    Case("port-empty", api_base("http://127.0.0.1:/v1"), "the port must be a number"),
    Case("space-in-host", api_base("'http://local host:8000/v1'"), "no spaces or control characters"),
    Case(
        "newline", api_base('"http://127.0.0.1/v1\\nX: y"'), "client.api_base: 'http://127.0.0.1/v1\\nX: y'"
    ),
    Case("unclosed-ipv6", api_base("'http://[::1:8000/v1'"), "client.api_base: 'http://[::1:8000/v1'"),
    Case(
        "host-does-not-resolve",
        api_base("http://nonexistent.invalid:8000/v1"),
        "client.api_base: 'http://nonexistent.invalid:8000/v1' is not allowed; "
        "its host 'nonexistent.invalid' does not resolve",
    ),
    Case(
        "host-does-not-resolve-without-server",
        RUNTIME + "client: {model: m, api_base: 'http://no-such-host.invalid/v1'}\n",
        "its host 'no-such-host.invalid' does not resolve",
    ),
    Case("flag-ftp", GOOD, "client.api_base: 'ftp://x/v1'", ("--client.api_base", "ftp://x/v1")),
    Case(
        "env-no-scheme",
        RUNTIME + "client: {model: m}\n",  # OPENAI_API_BASE serves runs without a server section
        "client.api_base (from OPENAI_API_BASE): 'localhost:8000'",
        env=(("OPENAI_API_BASE", "localhost:8000"),),
    ),
    Case(
        "env-host-does-not-resolve",
        RUNTIME + "client: {model: m}\n",  # OPENAI_API_BASE serves runs without a server section
        "its host 'gone.invalid' does not resolve",
        env=(("OPENAI_API_BASE", "http://gone.invalid:8000/v1"),),
    ),
    Case(
        "search-api-base-no-scheme",
        "benchmark_config: {client: {api_base: 'localhost:1/v1'}}\n",
        "benchmark_config.client.api_base: 'localhost:1/v1'",
        capacity_search=True,
    ),
    Case(
        "search-host-does-not-resolve",
        "benchmark_config: {client: {api_base: 'http://search.invalid/v1'}}\n",
        "benchmark_config.client.api_base",
        capacity_search=True,
    ),
]


def headers(mapping: str) -> str:
    return client(f"headers: {mapping}")


HEADERS = [
    # Any header but the plain ones may hold a credential: its value is never shown.
    Case("value-crlf-injection", headers('{X-Test: "a\\r\\nX-Evil: 1"}'), "X-Test: the value is not allowed"),
    Case("value-lf", headers('{User-Agent: "a\\nb"}'), "client.headers.User-Agent: 'a\\nb' is not allowed"),
    Case("value-cr", headers('{X-Test: "a\\rb"}'), "no line breaks (CR, LF)"),
    Case("value-nul", headers('{X-Test: "a\\0b"}'), "client.headers.X-Test"),
    Case("value-euro-sign", headers("{X-Test: 'price in €'}"), "latin-1 characters only"),
    Case("value-emoji", headers("{Accept: '🙂'}"), "client.headers.Accept: '🙂' is not allowed"),
    # Shown up to the space: `{Authorization Bearer sk-...}` is a name and a value (see SECRET_CASES).
    Case(
        "name-with-space",
        headers("{'X Test': a}"),
        "client.headers: a header name with a space in it is not allowed (X …: the rest is not shown, "
        "it may be a secret); a header name has no spaces or line breaks",
    ),
    Case("name-with-colon", headers("{'X-Test:': a}"), "header name 'X-Test:' is not allowed"),
    Case("name-empty", headers("{'': a}"), "header name '' is not allowed"),
    Case("name-not-ascii", headers("{X-Tëst: a}"), "header name 'X-Tëst'"),
    Case(
        "name-with-newline",
        headers('{"X-A\\nX-B": a}'),
        "client.headers: a header name with whitespace in it",
    ),
    Case(
        "secret-value-crlf-not-shown",
        headers('{Authorization: "Bearer sk-abc\\r\\nX: 1"}'),
        "client.headers.Authorization: the value is not allowed",
    ),
    Case(
        "flag-json-crlf",
        GOOD,
        "client.headers.X-A",
        ("--client.headers", '{"X-A": "a\\r\\nb"}'),
    ),
    Case(
        "env-api-key-newline",
        GOOD,
        "client.api_key: the key is not allowed",
        env=(("OPENAI_API_KEY", "sk-1\nX-Evil: 1"),),
    ),
]

YAML = [
    Case("duplicate-top-level", GOOD + "seed: 1\nseed: 2\n", f"seed: duplicate key in {CONFIG} line 5"),
    Case(
        "duplicate-nested",
        CLIENT + SERVER + "runtime:\n  max_requests: 1\n  max_requests: -1\n",
        "runtime.max_requests: duplicate key",
    ),
    Case("duplicate-in-flow", client("model: b"), "client.model: duplicate key"),
    Case(
        "duplicate-in-list-item",
        GOOD + "evaluators:\n- type: performance\n  slos: []\n  slos: []\n",
        "evaluators.0.slos: duplicate key",
    ),
    Case(
        "duplicate-section",
        GOOD + "runtime: {max_sessions: 3}\n",
        "runtime: duplicate key in c.veeksha.yml line 4 (first on line 3)",
    ),
    Case(
        "duplicate-in-included-file",
        CLIENT + SERVER + "runtime: !include runtime.yml\n",
        "max_requests: duplicate key in",
        files=(("runtime.yml", "max_requests: 1\nmax_requests: 2\n"),),
    ),
    Case("include-itself", GOOD + f"wandb: !include {CONFIG}\n", "makes a cycle"),
    Case(
        "include-cycle",
        GOOD + "wandb: !include a.yml\n",
        "b.yml line 1: !include a.yml makes a cycle",
        files=(("a.yml", "x: !include b.yml\n"), ("b.yml", "y: !include a.yml\n")),
    ),
    Case("include-missing", GOOD + "wandb: !include nowhere.yml\n", "!include nowhere.yml"),
    Case("alias-bomb", laughs(), f"{CONFIG}: the config expands to more than 100000 values"),
    Case("alias-inside-itself", GOOD + "wandb: &w {tags: *w}\n", "expands to more than 100000 values"),
    Case(
        "include-bomb",
        GOOD + "wandb: [" + ", ".join(["!include k.yml"] * 150) + "]\n",
        "expands to more than 100000 values",
        files=(("k.yml", ONE_KB_LIST),),
    ),
    Case("expand-bomb", expand_bomb(), "seed: the !expand values make a sweep of 100000 runs"),
    Case(
        "tag-python-object",
        GOOD + "seed: !!python/object/apply:os.system ['touch pwned']\n",
        "YAML tag !!python/object/apply:os.system is not allowed",
    ),
    Case("tag-binary", GOOD + "seed: !!binary aGVsbG8=\n", "line 4: YAML tag !!binary"),
    Case("tag-set", GOOD + "wandb: !!set {a, b}\n", "YAML tag !!set"),
    Case("tag-omap", GOOD + "wandb: !!omap [a: 1]\n", "YAML tag !!omap"),
    Case("tag-explicit-str", GOOD + "seed: !!str 5\n", "YAML tag !!str"),
    # A tag of its own is not named: it may be a secret written unquoted (`api_key: !sk...`).
    Case(
        "tag-custom", GOOD + "seed: !env SEED\n", "line 4 column 7: a value starting with '!' is a YAML tag"
    ),
    Case(
        "tag-on-mapping",
        CLIENT + SERVER + "runtime: !strict {max_requests: 1}\n",
        "line 3 column 10: a value",
    ),
    Case(
        "tag-verbatim", GOOD + "seed: !<tag:example.com,2024:x> 1\n", "the only tags are !expand and !include"
    ),
    Case("nested-too-deeply", GOOD + "wandb: " + "[" * 2000 + "]" * 2000 + "\n", "nested too deeply"),
    Case("not-utf8", "seed: \udcff\n", "cannot be read"),
]

RUNTIME_KEYS = "runtime: {max_requests: 1, benchmark_timeout: 5, "
DRIVERS = [
    Case("drivers-0", CLIENT + SERVER + RUNTIME_KEYS + "num_drivers: 0}\n", "runtime.num_drivers: 0"),
    Case("drivers-word", CLIENT + SERVER + RUNTIME_KEYS + "num_drivers: many}\n", "expected auto | int >= 1"),
    Case("drivers-float", CLIENT + SERVER + RUNTIME_KEYS + "num_drivers: 1.5}\n", "runtime.num_drivers: 1.5"),
    Case(
        "drivers-more-than-concurrent-sessions",
        GOOD + "traffic_scheduler: {type: concurrent, target_concurrent_sessions: 2}\n",
        "runtime.num_drivers: 3 is not allowed with traffic_scheduler.target_concurrent_sessions 2",
        ("--runtime.num_drivers", "3"),
    ),
    Case(
        "drivers-more-than-the-session-cap",
        GOOD + "traffic_scheduler: {type: rate, max_concurrent_sessions: 2}\n",
        "runtime.num_drivers: 3 is not allowed with traffic_scheduler.max_concurrent_sessions 2",
        ("--runtime.num_drivers", "3"),
    ),
    Case(
        "ray-address-no-port", CLIENT + SERVER + RUNTIME_KEYS + "ray_address: head}\n", "runtime.ray_address"
    ),
    Case(
        "ray-address-refused",
        CLIENT + SERVER + RUNTIME_KEYS + "ray_address: '127.0.0.1:1'}\n",
        "cannot reach the Ray cluster at '127.0.0.1:1' (Connection refused)",
    ),
    Case(
        "ray-address-bad-port",
        CLIENT + SERVER + RUNTIME_KEYS + "ray_address: 'h:99999'}\n",
        "HOST:PORT of the Ray",
    ),
]

TRACE = (("t.jsonl", '{"timestamp": 1.0, "input_length": 10, "output_length": 4}\n'),)
TIMED_TRACE = "session_generator: {type: trace, path: t.jsonl, timed_replay: true}\n"
# Found by a review: each was accepted, then ignored, misread or failed later with a traceback.
QUIET_MISTAKES = [
    # 0 == False in Python: `enabled: 0` was kept as 0 and then meant "on".
    Case(
        "metrics-enabled-0",
        GOOD + "server_metrics: {enabled: 0}\n",
        "server_metrics.enabled: 0 is not allowed",
    ),
    Case("metrics-enabled-1.0", GOOD + "server_metrics: {enabled: 1.0}\n", "server_metrics.enabled: 1.0"),
    Case(
        "drivers-more-than-cores",
        GOOD,
        "runtime.num_drivers: 1000000 is not allowed on",
        ("--runtime.num_drivers", "1000000"),
    ),
    Case(
        "timed-replay-concurrent",
        GOOD + TIMED_TRACE + "traffic_scheduler: {type: concurrent, target_concurrent_sessions: 2}\n",
        "session_generator.timed_replay: true is not allowed with traffic_scheduler.type concurrent",
        files=TRACE,
    ),
    Case(
        "capacity-search-timed-replay",
        GOOD_SEARCH + "  " + TIMED_TRACE,
        "benchmark_config.session_generator.timed_replay: a capacity search varies",
        files=TRACE,
        capacity_search=True,
    ),
    Case(
        "output-dir-a-file",
        GOOD,
        "output_dir: afile is not a directory",
        ("--output_dir", "afile"),
        files=(("afile", "x"),),
    ),
    Case(
        "output-dir-under-a-file",
        GOOD,
        "output_dir: afile/runs cannot be made: afile is not a directory",
        ("--output_dir", "afile/runs"),
        files=(("afile", "x"),),
    ),
    Case(
        "capacity-search-output-dir-a-file",
        GOOD_SEARCH,
        "output_dir: afile is not a directory",
        ("--output_dir", "afile"),
        files=(("afile", "x"),),
        capacity_search=True,
    ),
    Case(
        "expand-list-as-a-key",
        CLIENT.replace("model: m}", "model: m, headers: {? !expand [[1], [2]] : x}}") + SERVER + RUNTIME,
        "invalid YAML: unhashable type",
    ),
    Case(
        "target-channel-unknown",
        GOOD + "evaluators: [{type: performance, target_channels: [txt]}]\n",
        "evaluators.0.target_channels.0: 'txt' is not allowed; choose one of text",
    ),
    Case("expand-not-a-list", GOOD + "seed: !expand 5\n", f"{CONFIG} line 4: !expand needs a list"),
    # A flag that replaced a swept value turned the sweep into one run, without a word.
    Case(
        "flag-on-a-swept-key",
        GOOD + "seed: !expand [1, 2]\n",
        "--seed: seed is swept with !expand in the config file",
        ("--seed", "3"),
    ),
    Case(
        "flag-on-a-swept-section",
        GOOD + "wandb: {tags: !expand [[a], [b]]}\n",
        "--wandb: wandb.tags is swept with !expand in the config file",
        ("--wandb", "{enabled: false}"),
    ),
    # A double-quoted `\udcXX` is a lone surrogate, which no UTF-8 file (run.json, config.yml) holds.
    Case("surrogate-escape", GOOD + 'wandb: {notes: "n\\udce9"}\n', "config error at wandb.notes: "),
    Case("surrogate-escape-flag", GOOD, "config error at client.model: ", ("--client.model", '"m\\udce9"')),
    Case(
        "params-nested-too-deeply",
        CLIENT.replace("model: m}", "model: m, additional_sampling_params: " + "{a: " * 100 + "1" + "}" * 101)
        + SERVER
        + RUNTIME,
        "nested deeper than 64 levels",
    ),
]


def params(mapping: str, *keys: str) -> str:
    """A good config whose client sends `mapping` as additional_sampling_params (plus client `keys`)."""
    return client(", ".join([*keys, f"additional_sampling_params: {mapping}"]))


# Fields the client puts in every body itself (runner/driver/http/openai.py): a request parameter of
# the same name replaced them unseen, while the records described the client's values.
CLIENT_OWNED = [
    Case("params-stream", params("{stream: false}"), "client.additional_sampling_params.stream: "),
    Case("params-model", params("{model: other-model}"), "additional_sampling_params.model: "),
    Case("params-messages", params("{messages: [{role: user, content: hi}]}"), "params.messages: "),
    Case("params-prompt", params("{prompt: hi}", "type: openai_completions"), "params.prompt: "),
    Case("params-stream-options", params("{stream_options: {}}"), "params.stream_options: "),
    Case("params-ignore-eos", params("{ignore_eos: false}", "ignore_eos: true"), "params.ignore_eos: "),
    Case("params-max-tokens", params("{max_tokens: 5}"), "params.max_tokens: "),
    Case("params-max-completion-tokens", params("{max_completion_tokens: 5}"), "completion_tokens: "),
    Case(
        "params-max-tokens-completions",
        params("{max_tokens: 5}", "type: openai_completions"),
        "params.max_tokens: ",
    ),
    Case(
        "params-own-max-tokens-param",
        params("{max_new_tokens: 5}", "max_tokens_param: max_new_tokens"),
        "params.max_new_tokens: ",
    ),
    Case(
        "params-own-min-tokens-param",
        params("{min_tokens: 5}", "min_tokens_param: min_tokens"),
        "params.min_tokens: ",
    ),
    Case("params-json-string", params("'{\"stream\": false}'"), "client.additional_sampling_params.stream: "),
    Case(
        "params-flag",
        GOOD,
        "client.additional_sampling_params.model: ",
        ("--client.additional_sampling_params.model", "x"),
    ),
    # Not a field the client owns, but a body JSON cannot hold: a number key failed at every request.
    Case(
        "params-nested-number-key",
        params("{logit_bias: {50256: -100}}"),
        "client.additional_sampling_params.logit_bias.50256: the number 50256 as a key is not allowed",
    ),
    Case(
        "max-tokens-param-names-another-field",
        client("max_tokens_param: stream"),
        "client.max_tokens_param: 'stream' is not allowed",
    ),
]

# YAML 1.1 reads unquoted 0123, 1.10, 12:30 and yes as numbers and booleans: a string field turned
# them into other text ('83', '1.1', '750', 'True') and sent that without a word.
NUMBERS_AS_TEXT = [
    Case("model-1.10", client("model: 1.10").replace("model: m, ", ""), "client.model: the number 1.1 is"),
    Case("header-2.50", headers("{X-Version: 2.50}"), "client.headers.X-Version: "),
    Case("header-sexagesimal", headers("{X-T: 12:30}"), "client.headers.X-T: "),
    Case("header-name-number", headers("{0123: a}"), "client.headers.83: "),
    Case("run-name-010", GOOD + "wandb: {run_name: 010}\n", "wandb.run_name: the number 8 is not allowed"),
    Case("notes-yes", GOOD + "wandb: {notes: yes}\n", "wandb.notes: the boolean True is not allowed"),
    Case("api-key-flag-number", GOOD, "client.api_key: ", ("--client.api_key", "0123")),
    Case("tag-exponent", GOOD + "wandb: {tags: [1.0e+3]}\n", "wandb.tags.0: the number 1000.0"),
    Case(
        "env-value-octal",
        GOOD.replace("ready_timeout: 5}", "ready_timeout: 5, env: {MASK: 0022}}"),
        "env.MASK: ",
    ),
]

DAY = 24 * 3600


def runtime(keys: str) -> str:
    return CLIENT + SERVER + RUNTIME_KEYS + keys + "}\n"


def think_time(generator: str, graph: str = "linear") -> str:
    return (
        GOOD
        + f"session_generator: {{session_graph: {{type: {graph}, request_wait_generator: {generator}}}}}\n"
    )


# Timeouts, intervals and waits: a huge one overflowed a timer after the server started (a traceback,
# exit 1), or made the drain wait forever. Every one is at most a week.
DURATIONS = [
    Case(  # the gap of a week-long interval, given as a rate
        "arrival-rate-1e-9",
        GOOD + "traffic_scheduler: {interval_generator: {type: poisson, arrival_rate: 1.0e-9}}\n",
        "arrival_rate: 1e-09 is not allowed",
    ),
    Case("connect-timeout-1e10", client("connect_timeout: 1.0e+10"), "client.connect_timeout: 10000000000.0"),
    Case("connect-timeout-1e300", client("connect_timeout: 1.0e+300"), "<= 604800"),
    Case("request-timeout-8-days", client(f"request_timeout: {8 * DAY}"), "client.request_timeout: 691200"),
    Case(
        "metrics-interval-1e300",
        GOOD + "server_metrics: {interval_seconds: 1.0e+300}\n",
        "server_metrics.interval_seconds: 1e+300",
    ),
    Case(
        "benchmark-timeout-1e300",
        CLIENT + SERVER + "runtime: {max_requests: 1, benchmark_timeout: 1.0e+300}\n",
        "runtime.benchmark_timeout: 1e+300",
    ),
    Case(
        "grace-1e300", runtime("post_timeout_grace_seconds: 1.0e+300"), "post_timeout_grace_seconds: 1e+300"
    ),
    Case("grace-minus-0.5", runtime("post_timeout_grace_seconds: -0.5"), "post_timeout_grace_seconds: -0.5"),
    Case("grace-minus-2", runtime("post_timeout_grace_seconds: -2"), "must be -1, or >= 0"),
    Case(
        "ready-timeout-1e300",
        GOOD.replace("ready_timeout: 5", "ready_timeout: 1.0e+300"),
        "server.ready_timeout: 1e+300",
    ),
    Case(
        "rampup-1e300",
        GOOD + "traffic_scheduler: {type: concurrent, rampup_seconds: 1.0e+300}\n",
        "traffic_scheduler.rampup_seconds: 1e+300",
    ),
    Case(
        "fixed-interval-1e300",
        GOOD + "traffic_scheduler: {interval_generator: {type: fixed, interval: 1.0e+300}}\n",
        "traffic_scheduler.interval_generator.interval: 1e+300",
    ),
    Case(
        "think-time-fixed-1e300",
        think_time("{type: fixed, value: 1.0e+300}"),
        "session_generator.session_graph.request_wait_generator: values reaching 1e+300 are not",
    ),
    Case(
        "think-time-uniform-max-8-days",
        think_time(f"{{type: uniform, min: 0, max: {8 * DAY}}}"),
        "session_generator.session_graph.request_wait_generator: values reaching 691200 are not",
    ),
    Case(
        "think-time-branching-mean-1e300",
        think_time("{type: inverse_gaussian, mean: 1.0e+300, shape: 1}", "branching"),
        "session_generator.session_graph.request_wait_generator",
    ),
    Case(
        "think-time-stair-1e300",
        think_time("{type: fixed_stair, values: [1, 1.0e+300]}"),
        "values reaching 1e+300 are not allowed; must be <= 604800",
    ),
    Case(
        "simulated-decode-step-1e300",
        CLIENT + RUNTIME + "server: {type: simulated, decode_step_base: 1.0e+300}\n",
        "server.decode_step_base: 1e+300",
    ),
    Case(
        "search-timeout-1e300",
        GOOD_SEARCH.replace("benchmark_timeout: 5", "benchmark_timeout: 1.0e+300"),
        "benchmark_config.runtime.benchmark_timeout: 1e+300",
        capacity_search=True,
    ),
]


def env(mapping: str) -> str:
    return GOOD.replace("ready_timeout: 5}", f"ready_timeout: 5, env: {mapping}}}")


# What the server process cannot be started with (Popen raised a ValueError after the run
# directory was made).
SERVER_PROCESS = [
    Case("env-name-with-equals", env("{'A=B': x}"), "server.env: a variable name with '=' is not allowed"),
    Case("env-name-empty", env("{'': x}"), "server.env: an empty variable name is not allowed"),
    Case("env-value-nul", env('{A: "x\\0y"}'), "server.env.A: a NUL character is not allowed"),
    Case("env-value-surrogate", env('{A: "x\\ud800y"}'), "server.env.A: "),
    Case(
        "command-nul",
        GOOD.replace("open('server-started', 'w')\"]", "open('server-started', 'w')\", \"a\\0b\"]"),
        "server.command.3: a NUL character is not allowed",
    ),
]


def slos(*entries: str) -> str:
    return GOOD + f"evaluators: [{{type: performance, slos: [{', '.join(entries)}]}}]\n"


# Two SLOs under one name: one verdict hid the other in slo_results and W&B (`slo/<name>/...`).
NAMES = [
    Case(
        "slo-duplicate-name",
        slos("{name: a, metric: ttfc, value: 1}", "{name: a, metric: e2e, value: 5}"),
        "evaluators.0.slos.1.name: 'a' is not allowed; SLO names must be unique",
    ),
    Case(
        "slo-names-equal-in-wandb",
        slos("{name: p99/ttfc, metric: ttfc, value: 1}", "{name: p99_ttfc, metric: e2e, value: 5}"),
        "evaluators.0.slos.1.name: 'p99_ttfc' is not allowed",
    ),
    Case("slo-empty-name", slos("{name: '', metric: ttfc, value: 1}"), "evaluators.0.slos.0.name: ''"),
    Case("slo-blank-name", slos("{name: ' ', metric: ttfc, value: 1}"), "evaluators.0.slos.0.name: ' '"),
    Case(
        "second-evaluators-health",
        GOOD + "evaluators: [{type: performance}, {type: performance, health: {max_error_rate: 0.5}}]\n",
        "evaluators.1.health: only the first evaluator's health thresholds are used",
    ),
    Case(
        "slo-name-across-evaluators",
        GOOD
        + "evaluators: [{slos: [{name: a, metric: ttfc, value: 1}]},"
        + " {slos: [{name: a, metric: e2e, value: 2}]}]\n",
        "evaluators.1.slos.0.name: 'a' is not allowed",
    ),
]

CONCURRENT_SEARCH = GOOD_SEARCH + "  traffic_scheduler: {type: concurrent}\n"
# A concurrency search probed concurrency 1 above a max_value below 1, and reported it as the best.
SEARCH = [
    Case(
        "search-concurrency-max-0.5",
        CONCURRENT_SEARCH + "start_value: 0.5\nmax_value: 0.5\n",
        "max_value: 0.5 is not allowed; a concurrency search needs >= 1",
        capacity_search=True,
    ),
    Case(
        "search-concurrency-start-0.5",
        CONCURRENT_SEARCH + "start_value: 0.5\nmax_value: 4\n",
        "start_value: 0.5 is not allowed; a concurrency search needs >= 1",
        capacity_search=True,
    ),
    Case(
        "search-rate-max-below-precision",
        GOOD_SEARCH + "start_value: 0.001\nmax_value: 0.001\n",
        "max_value: 0.001 is not allowed; a rate search at precision 2 needs >= 0.01",
        capacity_search=True,
    ),
]

# Ignored or misread without a word.
MINOR = [
    Case("tokenizer-empty", client("tokenizer: ''"), "client.tokenizer: '' is not allowed"),
    Case(
        # Loads, then cannot encode a word outside its vocabulary (its unk_token is not in it).
        "tokenizer-cannot-encode",
        client("tokenizer: tokenizer.json"),
        "client.tokenizer",
        files=(("tokenizer.json", UNK_LESS_TOKENIZER),),
    ),
    Case("max-tokens-param-empty", client("max_tokens_param: ''"), "client.max_tokens_param: '' is not"),
    Case("min-tokens-param-empty", client("min_tokens_param: ''"), "client.min_tokens_param: '' is not"),
    Case(
        "trace-path-dot",
        GOOD + "session_generator: {type: trace, path: .}\n",
        "session_generator.path: '.' is a directory",
    ),
    Case("trace-path-slash", GOOD + "session_generator: {type: trace, path: traces/}\n", "is a directory"),
]

# Sizes that validated, then exhausted memory once the run began: one random stream per shared
# prefix, one slot per concurrent session, every node of a session graph.
SIZES = [
    Case(
        "concurrency-1e9",
        GOOD + "traffic_scheduler: {type: concurrent, target_concurrent_sessions: 1000000000}\n",
        "traffic_scheduler.target_concurrent_sessions: 1000000000 is not allowed; must be >= 1 and "
        "<= 1000000",
    ),
    Case(
        "max-concurrent-sessions-1e9",
        GOOD + "traffic_scheduler: {type: rate, max_concurrent_sessions: 1000000000}\n",
        "traffic_scheduler.max_concurrent_sessions: 1000000000 is not allowed",
    ),
    Case(
        "prefix-pool-1e12",
        GOOD + "session_generator: {type: synthetic, shared_prefix_pool_size: 1000000000000}\n",
        "session_generator.shared_prefix_pool_size: 1000000000000 is not allowed; must be >= 1 and <= 10000",
    ),
    Case(
        "channel-prefix-pool-1e12",
        GOOD + "session_generator: {channels: [{type: text, shared_prefix_pool_size: 1000000000000}]}\n",
        "session_generator.channels.0.shared_prefix_pool_size: 1000000000000 is not allowed",
    ),
    Case(
        "branching-1e8-nodes",
        GOOD
        + "session_generator: {session_graph: {type: branching, num_layers_generator: 10000, "
        + "layer_width_generator: {type: uniform, min: 1, max: 10000}}}\n",
        "session_generator.session_graph: sessions of up to 100,000,000 requests (num_layers_generator "
        "up to 10,000 x layer_width_generator up to 10,000) are not allowed; at most 10,000",
    ),
    Case(
        "flag-concurrency-1e9",
        GOOD + "traffic_scheduler: {type: concurrent}\n",
        "target_concurrent_sessions: 1000000000 is not allowed",
        ("--traffic_scheduler.target_concurrent_sessions", "1000000000"),
    ),
]

# YAML 1.1 reads an integer with a leading zero as octal: `seed: 0042` ran with seed 34.
LEADING_ZEROS = [
    Case(
        "seed-leading-zero", GOOD + "seed: 0042\n", "seed: 0042 is not allowed; write 42 without the leading"
    ),
    Case(
        "flag-leading-zero",
        GOOD,
        "runtime.max_sessions: 010 is not allowed; write 10 without the leading zero",
        ("--runtime.max_sessions", "010"),
    ),
]

# Streaming off: a reply is one chunk, with no gaps (tbc) and no tpot, so these SLOs have no samples
# and always fail in slo_results while every request passes them for goodput.
STREAMING_OFF = [
    Case(
        f"{metric}-slo-not-streamed",
        client("stream: false") + f"evaluators: [{{slos: [{{name: s, metric: {metric}, value: 1}}]}}]\n",
        f"config error at evaluators.0.slos.0.metric: {metric} is not allowed with client.stream false",
    )
    for metric in ("tbc", "tpot", "tpot_answer")
] + [
    Case(
        "tpot-slo-stream-flag-false",
        slos("{name: s, metric: tpot, value: 1}"),
        "evaluators.0.slos.0.metric: tpot is not allowed with client.stream false",
        ("--client.stream", "false"),
    ),
    Case(
        "search-tbc-slo-not-streamed",
        GOOD_SEARCH.replace("model: m}", "model: m, stream: false}")
        + "  evaluators: [{slos: [{name: s, metric: tbc, value: 1}]}]\n",
        "benchmark_config.evaluators.0.slos.0.metric: tbc is not allowed with "
        "benchmark_config.client.stream false",
        capacity_search=True,
    ),
]

CASES = (
    STOPPING
    + NUMBERS
    + API_BASE
    + HEADERS
    + YAML
    + DRIVERS
    + QUIET_MISTAKES
    + CLIENT_OWNED
    + NUMBERS_AS_TEXT
    + DURATIONS
    + SERVER_PROCESS
    + NAMES
    + SEARCH
    + MINOR
    + SIZES
    + LEADING_ZEROS
    + STREAMING_OFF
)
# A real `veeksha-run` process for one case of each kind.
SUBPROCESS_IDS = {
    "timeout-0-no-limit",
    "seed-nan",
    "no-scheme",
    "host-does-not-resolve",
    "env-no-scheme",
    "value-crlf-injection",
    "duplicate-nested",
    "include-itself",
    "alias-bomb",
    "tag-python-object",
    "search-timeout-0",
    "params-stream",
    "model-1.10",
    "connect-timeout-1e10",
    "env-name-with-equals",
    "slo-duplicate-name",
    "search-concurrency-max-0.5",
}


# ---------------------------------------------------------------- the harness


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback socket that accepts nothing by itself: connections wait in its backlog, to be counted."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    yield sock
    sock.close()


def connections_received(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def write_case(case: Case, folder: Path, sock: socket.socket) -> None:
    port = sock.getsockname()[1]
    for name, text in ((CONFIG, case.config), *case.files):
        text = text.replace("{api}", f"http://127.0.0.1:{port}/v1").replace("{py}", sys.executable)
        (folder / name).write_bytes(text.encode("utf-8", "surrogateescape"))


def argv_for(case: Case, *extra: str) -> list[str]:
    command = ["capacity-search"] if case.capacity_search else []
    return [*command, "--config", CONFIG, "--output_dir", "out", *case.flags, *extra]


def outcome(exit_code: object, stderr: str, created: set[str], sock: socket.socket) -> dict[str, object]:
    lines = stderr.strip().splitlines()
    return {
        "exit_code": exit_code,
        "stderr_lines": len(lines),
        "prefix": lines[0].split(":")[0] if lines else None,
        "created": sorted(created),
        "connections": connections_received(sock),
    }


REFUSED = {"exit_code": 2, "stderr_lines": 1, "prefix": "veeksha-run", "created": [], "connections": 0}


def refused_in_process(
    case: Case,
    tmp_path: Path,
    sock: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *extra: str,
) -> tuple[dict[str, object], str]:
    write_case(case, tmp_path, sock)
    monkeypatch.chdir(tmp_path)
    for name, value in case.env:
        monkeypatch.setenv(name, value)
    before = set(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv_for(case, *extra))
    stderr = capsys.readouterr().err
    created = set(p.name for p in tmp_path.iterdir()) - before
    return outcome(exited.value.code, stderr, created, sock), stderr.strip()


# ---------------------------------------------------------------- the tests


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("config", [GOOD, GOOD_SEARCH], ids=["benchmark", "capacity-search"])
def test_the_good_base_configs_are_accepted(
    config: str,
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cases are the base plus one fault, so the base itself must pass (as a dry run)."""
    write_case(Case("good", config, ""), tmp_path, listener)
    monkeypatch.chdir(tmp_path)
    if config is GOOD_SEARCH:  # capacity search has no --dry-run: load it the way the command does
        from veeksha.shared.config_loader import load_capacity_search

        assert load_capacity_search(Path(CONFIG)).benchmark_config.client.model == "m"
        return
    with pytest.raises(SystemExit) as exited:
        main(["--config", CONFIG, "--dry-run"])
    assert (exited.value.code, capsys.readouterr().err) == (0, "")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_before_anything_starts(
    case: Case,
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    observed, line = refused_in_process(case, tmp_path, listener, capsys, monkeypatch)
    assert (observed, case.expected in line) == (REFUSED, True), line


DRY_RUN_CASES = [c for c in CASES if not c.capacity_search]


@pytest.mark.parametrize("case", DRY_RUN_CASES, ids=[c.id for c in DRY_RUN_CASES])
def test_a_dry_run_refuses_the_same_input(
    case: Case,
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    observed, line = refused_in_process(case, tmp_path, listener, capsys, monkeypatch, "--dry-run")
    assert (observed, case.expected in line) == (REFUSED, True), line


SUBPROCESS_CASES = [c for c in CASES if c.id in SUBPROCESS_IDS]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_the_real_command_refuses_bad_input(case: Case, tmp_path: Path, listener: socket.socket) -> None:
    write_case(case, tmp_path, listener)
    before = set(p.name for p in tmp_path.iterdir())
    proc = run_cli(argv_for(case), cwd=tmp_path, env=dict(case.env), timeout=60)
    created = set(p.name for p in tmp_path.iterdir()) - before
    line = proc.stderr.strip()
    observed = outcome(proc.returncode, proc.stderr, created, listener)
    assert (observed, case.expected in line) == (REFUSED, True), line


def test_a_secret_header_value_is_not_shown(
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = next(c for c in CASES if c.id == "secret-value-crlf-not-shown")
    _, line = refused_in_process(case, tmp_path, listener, capsys, monkeypatch)
    assert "sk-abc" not in line


# A bad value that is or holds a secret: refused like any other, and never echoed. Each marks its
# secret with SEKRET.
SECRET_CASES = [
    Case(
        "headers-json-cut-short",
        GOOD,
        "client.headers: its value (not shown",
        ("--client.headers", '{"Authorization": "Bearer sk-SEKRET", "X-a": '),
    ),
    Case(
        "command-as-a-string",
        CLIENT + RUNTIME + "server: {type: command, command: 'vllm serve m --api-key sk-SEKRET'}\n",
        "server.command: its value (not shown",
    ),
    Case(
        "command-item-not-a-string",
        CLIENT + RUNTIME + "server: {type: command, command: [vllm, {sk-SEKRET: 1}]}\n",
        "server.command.1",
    ),
    Case(
        "env-as-a-string",
        GOOD.replace("ready_timeout: 5}", "ready_timeout: 5, env: 'HF_TOKEN=hf_SEKRET'}"),
        "server.env: its value (not shown",
    ),
    Case(
        "api-base-password-and-key",
        RUNTIME + "client: {api_base: 'http://u:SEKRET@no-such-host.invalid/v1?api_key=SEKRET', model: m}\n",
        "client.api_base: 'http://<redacted>@no-such-host.invalid/v1?<redacted>'",
    ),
    Case(
        "api-base-no-scheme-token",
        RUNTIME + "client: {api_base: 'localhost:8000/v1?token=SEKRET', model: m}\n",
        "client.api_base: 'localhost:8000/v1?<redacted>'",
    ),
    Case(
        "api-base-env-bad-scheme",
        RUNTIME + "client: {model: m}\n",
        "client.api_base",
        env=(("OPENAI_API_BASE", "ftp://u:SEKRET@h/v1"),),
    ),
    Case("env-name-holding-a-value", env("{'HF_TOKEN=SEKRET': x}"), "server.env: a variable name with '='"),
    Case("env-value-nul", env('{HF_TOKEN: "SEKRET\\0"}'), "server.env.HF_TOKEN: a NUL character"),
    Case(
        "command-nul",
        CLIENT
        + RUNTIME
        + "server: {type: command, command: [vllm, \"--api-key=SEKRET\\0\"], ready_url: '{api}'}\n",
        "server.command.1: a NUL character",
    ),
    Case(
        "unquoted-header-value",
        GOOD,
        "unexpected argument after --client.headers.Authorization's value",
        ("--client.headers.Authorization", "Bearer", "sk-SEKRET"),
    ),
    # A whole section given as text (a flag that is not valid YAML stays text): the section may hold
    # secrets, so the text is not shown; the line says what shape was expected instead.
    Case(
        "client-flag-not-valid-yaml",
        GOOD,
        "config error at client: its value (not shown: it may hold a secret) is not allowed; expected a "
        "mapping of ClientConfig keys (YAML {key: value}), got a string that starts with '{' but is not "
        "valid YAML",
        ("--client", "{model: m, api_key: SEKRET"),
    ),
    Case(
        "client-flag-key-equals-value",
        GOOD,
        "config error at client: its value (not shown",
        ("--client", "api_key=SEKRET"),
    ),
    Case(
        "server-flag-not-valid-yaml",
        GOOD,
        "config error at server: its value (not shown",
        ("--server", "{type: command, command: [vllm, serve, --api-key, SEKRET]"),
    ),
    Case("wandb-as-a-string", GOOD + "wandb: 'api_key=SEKRET'\n", "config error at wandb: its value (not"),
    Case("evaluators-as-a-string", GOOD + "evaluators: SEKRET\n", "evaluators: its value (not shown"),
    Case("root-list", "- SEKRET\n", "the top level must be a mapping"),
    # A secret written where YAML reads a tag, an alias or an anchor: the line and column, not the text.
    Case(
        "api-key-as-a-tag",
        SERVER + RUNTIME + "client:\n  api_base: '{api}'\n  api_key: !SEKRET_1\n",
        f"{CONFIG} line 5 column 12: a value starting with '!' is a YAML tag (not shown",
    ),
    Case("api-key-as-an-alias", client("api_key: *SEKRET_2"), f"{CONFIG} line 3 column "),
    Case("api-key-as-an-anchor", client("api_key: &SEKRET_3"), f"{CONFIG} line 3 column "),
    Case(
        "api-key-as-a-duplicate-anchor",
        client("api_key: &SEKRET_4 a, model: &SEKRET_4 b"),
        f"{CONFIG} line 3 column",
    ),
    Case("tag-not-a-known-one", GOOD + "seed: !!SEKRET 5\n", f"{CONFIG} line 4 column 7: a value starting"),
    # `key:value` without the space after the colon is one key in a flow mapping (`{a:b}` is {'a:b': null}).
    Case(
        "header-without-space",
        headers("{Authorization:Bearer SEKRET}"),
        "client.headers: a header name with ':'",
    ),
    Case(
        "header-without-space-twice",
        headers("{Authorization:Bearer SEKRET, Authorization:Bearer SEKRET}"),
        "config error at client.headers.Authorization:…: duplicate key",
    ),
    Case(
        "env-flag-without-space",
        GOOD,
        "config error at server.env: a variable name with ':'",
        ("--server.env", "{HF_TOKEN:SEKRET}"),
    ),
    Case(
        "params-flag-without-space",
        GOOD,
        "config error at client.additional_sampling_params: a key with ':' is not allowed (api_key:…",
        ("--client.additional_sampling_params", "{api_key:SEKRET}"),
    ),
    Case(
        "nested-param-without-space",
        params("{extra_body: {api_key:SEKRET}}"),
        "client.additional_sampling_params.extra_body: a key with ':'",
    ),
    Case("client-key-without-space", client("api_key:SEKRET"), "config error at client: a key with ':'"),
    Case("client-key-equals-value", client("api_key=SEKRET"), "config error at client: a key with '='"),
    Case(
        "header-equals-value",
        headers("{Authorization=Bearer SEKRET}"),
        "client.headers: a header name with '='",
    ),
    Case(
        "param-equals-value", params("{api_key=SEKRET}"), "client.additional_sampling_params: a key with '='"
    ),
    Case("env-equals-value-null", env("{HF_TOKEN=SEKRET}"), "server.env: a variable name with '='"),
    # `key value` without the colon is one key with no value: only its first word is shown.
    Case(
        "client-key-space-value",
        client("api_key sk-SEKRET"),
        "config error at client: a key with a space in it is not allowed (api_key …: the rest is not "
        "shown, it may be a secret); did you forget the ':' after 'api_key'?",
    ),
    Case(
        "header-space-value",
        headers("{Authorization Bearer sk-SEKRET}"),
        "config error at client.headers: a header name with a space in it is not allowed (Authorization …",
    ),
    Case(
        "env-space-value",
        env("{HF_TOKEN hf_SEKRET}"),
        "config error at server.env: a variable name with a space in it is not allowed (HF_TOKEN …",
    ),
    Case(
        "client-flag-space-value",
        GOOD,
        "config error at client: a key with a space in it is not allowed (api_key …",
        ("--client", "{api_key sk-SEKRET}"),
    ),
    Case(
        "param-space-value",
        params("{api_key SEKRET}"),
        "client.additional_sampling_params: a key with a space in it is not allowed (api_key …",
    ),
    # A flag value YAML reads as null unset the key: client.api_key fell back to OPENAI_API_KEY.
    Case(
        "api-key-flag-anchor",
        GOOD,
        "--client.api_key: its value (not shown: it may hold a secret) reads as null in YAML",
        ("--client.api_key", "&sk-SEKRET"),
    ),
    Case(
        "api-key-flag-anchor-in-a-mapping",
        GOOD,
        "--client line 1 column 21: a value starting with '&' is a YAML anchor (not shown",
        ("--client", "{model: m, api_key: &sk-SEKRET}"),
    ),
    Case(
        "nested-param-space-value",
        params("{extra_body: {api_key SEKRET}}"),
        "client.additional_sampling_params.extra_body: a key with a space in it is not allowed (api_key …",
    ),
]


@pytest.mark.parametrize("case", SECRET_CASES, ids=[c.id for c in SECRET_CASES])
def test_a_bad_value_that_may_be_a_secret_is_refused_without_showing_it(
    case: Case,
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    observed, line = refused_in_process(case, tmp_path, listener, capsys, monkeypatch, "--dry-run")
    assert observed == REFUSED, line
    assert case.expected in line and "SEKRET" not in line, line


@pytest.mark.parametrize(
    "argv, config, secret",
    [
        (["--client", "{model: m, api_key: ABAB1111sk"], "", "ABAB1111sk"),
        (["--client", "api_key=ABAB2222sk"], "", "ABAB2222sk"),
        (["--server", "{type: command, command: [vllm, serve, --api-key, ABAB3333sk]"], "", "ABAB3333sk"),
        (
            [
                *("--client.api_base", "http://127.0.0.1:9/v1", "--client.model", "m"),
                *("--client.additional_sampling_params", "{api_key:QQQQ2222zzz}"),
            ],
            "",
            "QQQQ2222zzz",
        ),
        (["--server.type", "command", "--server.env", "{HF_TOKEN:QQQQ3333zzz}"], "", "QQQQ3333zzz"),
        ([], "client:\n  model: m\n  api_key: !Secr3t_NNNN1111\n", "NNNN1111"),
        ([], "client:\n  model: m\n  api_key: *Secr3t_NNNN3333\n", "NNNN3333"),
        ([], "client:\n  model: m\n  headers: {Authorization:Bearer PPPP5555xyz}\n", "PPPP5555xyz"),
        (["--client", "{api_key sk-RRRR1111xyz}"], "", "RRRR1111xyz"),
        ([], "client: {model: m, api_key sk-RRRR2222xyz}\n", "RRRR2222xyz"),
        ([], "client:\n  model: m\n  headers: {Authorization Bearer sk-RRRR3333xyz}\n", "RRRR3333xyz"),
        (["--server.type", "command", "--server.env", "{HF_TOKEN hf_RRRR4444xyz}"], "", "RRRR4444xyz"),
    ],
    ids=[
        "client-cut-short",
        "client-key-equals",
        "server-cut-short",
        "params-no-space",
        "env-no-space",
        "tag",
        "alias",
        "header-no-space",
        "client-flag-no-colon",
        "client-key-no-colon",
        "header-no-colon",
        "env-no-colon",
    ],
)
def test_the_real_command_does_not_echo_a_secret_in_a_config_error(
    argv: list[str], config: str, secret: str, tmp_path: Path
) -> None:
    """The review's commands, as a real `veeksha-run --dry-run`: one line, exit 2, nothing written."""
    if config:
        (tmp_path / CONFIG).write_text(config)
        argv = ["--config", CONFIG, *argv]
    proc = run_cli([*argv, "--dry-run"], cwd=tmp_path, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert (proc.returncode, len(lines), proc.stdout) == (2, 1, ""), proc.stderr
    assert lines[0].startswith("veeksha-run: ") and secret not in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ([CONFIG] if config else [])


@pytest.mark.parametrize(
    "keys, shown_as",
    [
        ("api_key: 0123456", "149294"),  # YAML 1.1 octal: the key would have been '149294'
        ("headers: {X-Auth: 1.50}", "1.5"),
    ],
    ids=["api-key", "secret-header"],
)
def test_a_number_given_for_a_secret_is_refused_without_showing_it(
    keys: str,
    shown_as: str,
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = Case("secret-number", client(keys), "quote the value")
    observed, line = refused_in_process(case, tmp_path, listener, capsys, monkeypatch, "--dry-run")
    assert observed == REFUSED, line
    assert case.expected in line and shown_as not in line, line


def test_a_sweep_over_output_dir_is_refused(
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sweep writes every run under one directory: a second output_dir would be ignored."""
    write_case(Case("sweep", GOOD + "output_dir: !expand [a, b]\n", ""), tmp_path, listener)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["--config", CONFIG, "--dry-run"])
    line = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and line.startswith("veeksha-run: config error at output_dir: !expand")
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["capacity-search"], "Missing option '--config'"),
        (["simulate-server", "--port", "abc"], "'abc' is not a valid integer"),
        (["evaluate"], "Missing argument"),
    ],
    ids=["capacity-search-no-config", "simulate-server-bad-port", "evaluate-no-dir"],
)
def test_a_subcommand_usage_error_is_one_line(argv: list[str], expected: str, tmp_path: Path) -> None:
    proc = run_cli(argv, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert (
        line.startswith("veeksha-run: ") and expected in line and f"see veeksha-run {argv[0]} --help" in line
    )


# ---------------------------------------------------------------- what stays allowed


@pytest.mark.parametrize(
    "config",
    [
        # A trace that does not start over ends by itself: it needs no timeout.
        CLIENT
        + "runtime: {benchmark_timeout: 0}\n"
        + "session_generator: {type: trace, path: t.jsonl, wrap: false}\n",
        CLIENT + "runtime: {benchmark_timeout: 0, max_sessions: 5}\n",
        CLIENT + "runtime: {benchmark_timeout: -1, max_requests: 0}\n",
        # YAML merge keys override what they merge: that is not a duplicate.
        CLIENT + "runtime:\n  <<: {max_requests: 1, warmup_sessions: 1}\n  warmup_sessions: 2\n",
        # Aliases used normally, and a user api_base that a simulated server replaces.
        RUNTIME + "client: {api_base: &u '{api}', model: m}\nwandb: {notes: *u}\n",
        RUNTIME + "client: {api_base: 'http://ignored.invalid/v1'}\nserver: {type: simulated}\n",
        GOOD + "seed: 9223372036854775807\n",
        # config.md puts the prefix pool on the synthetic generator; a channel may also set its own.
        GOOD + "session_generator: {type: synthetic, shared_prefix_pool_size: 4}\n",
        # The documented sentinel, and the bounds themselves.
        runtime("post_timeout_grace_seconds: -1"),
        runtime("post_timeout_grace_seconds: 0"),
        client(f"request_timeout: {7 * DAY}, connect_timeout: {7 * DAY}.0"),
        think_time(f"{{type: uniform, min: 0, max: {7 * DAY}}}"),
        # Quoted, a number is text; request parameters the client does not set are the user's.
        client("headers: {X-Version: '2.50'}, api_key: '0123', additional_sampling_params: {top_k: 5}")
        + "wandb: {run_name: '010', tags: ['1.0']}\n",
        env("{CUDA_VISIBLE_DEVICES: '0', EMPTY: ''}"),
        slos("{name: a, metric: ttfc, value: 1}", "{name: b, metric: ttfc, value: 2}"),
    ],
    ids=[
        "finite-trace",
        "max-sessions",
        "max-requests",
        "merge-key",
        "alias",
        "simulated-server",
        "int64-max",
        "prefix-pool-on-the-generator",
        "grace-minus-1",
        "grace-0",
        "timeouts-a-week",
        "think-time-a-week",
        "quoted-numbers-and-own-params",
        "env-quoted-number-and-empty-value",
        "distinct-slo-names",
    ],
)
def test_configs_that_can_end_and_use_plain_yaml_are_accepted(
    config: str,
    tmp_path: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_case(Case("ok", config, ""), tmp_path, listener)
    (tmp_path / "t.jsonl").write_text('{"session_id": 1, "input_length": 10, "output_length": 4}\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["--config", CONFIG, "--dry-run"])
    assert (exited.value.code, capsys.readouterr().err) == (0, "")
