"""A reasoning model end to end: the simulated server thinks before it answers, over real loopback HTTP.

With a fixed decode step and no batching cost, R reasoning tokens delay the first answer chunk by about
R steps after the first chunk of any output: ttfa − ttfc measures the thinking, ttfc does not.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import orjson
import pytest
from veeksha.shared.records import COUNT_APPROXIMATE, COUNT_SERVER

from tests.runner.helpers import only_run_dir, read_jsonl, run_cli
from tests.uploader.conftest import make_home, upload
from tests.uploader.wandb_records import offline_run_dirs, read_offline_run

REASONING_TOKENS = 30
STEP_S = 0.004
CONFIG = f"""
seed: 5
output_dir: out
server:
  type: simulated
  reasoning_tokens: {REASONING_TOKENS}
  reasoning_field: reasoning
  decode_step_base: {STEP_S}
  decode_step_per_seq: 0
  per_token_prefill_time: 0
traffic_scheduler: {{type: rate, interval_generator: {{type: poisson, arrival_rate: 5}}}}
runtime: {{max_sessions: 10}}
session_generator:
  type: synthetic
  output_spec: {{text: {{output_length_generator: 50}}}}
evaluators:
  - type: performance
    slos: [{{name: answer starts, metric: ttfa, value: 2.0}}]
"""


@pytest.fixture(scope="module")
def reasoning_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("reasoning")
    (tmp / "c.veeksha.yml").write_text(CONFIG)
    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return only_run_dir(tmp / "out"), proc.stdout


def test_ttfa_exceeds_ttfc_by_the_configured_reasoning_time(reasoning_run) -> None:
    paths, _ = reasoning_run
    ok = [r for r in read_jsonl(paths.request_records) if r["status"] == "success"]
    assert len(ok) == 10
    thinking = statistics.median(r["ttfa"] - r["ttfc"] for r in ok)
    # The first chunk is the first reasoning token; the answer starts R − 1 steps later.
    expected = (REASONING_TOKENS - 1) * STEP_S
    assert expected * 0.9 <= thinking <= expected * 1.5, thinking
    assert all(r["num_reasoning_tokens"] == REASONING_TOKENS for r in ok)
    assert all(r["reasoning_token_source"] == COUNT_SERVER and r["num_output_tokens"] == 50 for r in ok)
    # Answer tokens only: 20 of them, one step apart.
    assert statistics.median(r["tpot_answer"] for r in ok) == pytest.approx(STEP_S, rel=0.3)


def test_ttfa_reaches_the_summary_the_slo_table_and_the_console(reasoning_run) -> None:
    paths, stdout = reasoning_run
    stats = orjson.loads(paths.summary_stats.read_bytes())
    assert stats["ttfa_p50"] > stats["ttfc_p50"] + 0.1 and stats["tpot_answer_p50"] > 0
    assert (paths.metrics / "ttfa.csv").exists() and (paths.metrics / "tpot_answer.csv").exists()
    slo = orjson.loads(paths.slo_results.read_bytes())["results"]
    assert [(r["metric"], r["met"]) for r in slo] == [("ttfa", True)]
    assert "TTFA" in stdout and stdout.index("TTFC") < stdout.index("TTFA") < stdout.index("TBC")


def test_the_wandb_run_gets_ttfa_and_tpot_answer(reasoning_run, tmp_path: Path) -> None:
    paths, _ = reasoning_run
    proc = upload(["--mode", "offline", str(paths.root)], make_home(tmp_path / "home"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (sync_dir,) = offline_run_dirs(paths.root)
    summary = read_offline_run(sync_dir).summary
    stats = orjson.loads(paths.summary_stats.read_bytes())
    assert summary["ttfa_p99"] == stats["ttfa_p99"] and summary["tpot_answer_p50"] == stats["tpot_answer_p50"]
    assert {"quantiles/ttfa", "quantiles/tpot_answer", "cdf/ttfa_table"} <= set(summary)


def test_without_usage_the_reasoning_tokens_are_counted_from_the_reasoning_text(tmp_path: Path) -> None:
    (tmp_path / "c.veeksha.yml").write_text(CONFIG.replace("max_sessions: 10", "max_sessions: 3"))
    proc = run_cli(["--config", "c.veeksha.yml", "--client.include_usage", "false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    assert {r["reasoning_token_source"] for r in records} == {COUNT_APPROXIMATE}
    assert all(r["num_reasoning_tokens"] >= REASONING_TOKENS * 0.5 for r in records)
    assert all(r["num_reasoning_tokens"] < r["num_output_tokens"] for r in records)


def test_a_later_turn_counts_the_answer_not_the_reasoning_as_its_history(tmp_path: Path) -> None:
    # The history sends the previous answer only; the server counts its reasoning among the reply's
    # tokens, and they were taken for history: a cacheable prefix 5 times the prompt the server saw.
    graph = (
        "session_graph: {type: linear, inherit_history: true, num_request_generator: 3, "
        "request_wait_generator: 0}\n  channels: [{type: text, body_length_generator: 5}]\n"
    )
    config = CONFIG.replace("max_sessions: 10", "max_sessions: 3").replace(
        "  type: synthetic\n", "  type: synthetic\n  " + graph
    )
    (tmp_path / "c.veeksha.yml").write_text(config)
    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(only_run_dir(tmp_path / "out").request_records)
    later = [r for r in records if r["node_id"] > 0]
    assert len(later) == 6 and all(r["token_count_source"] == COUNT_SERVER for r in later)
    for r in later:  # the server's count of what it was sent holds the history and the new turn
        assert r["num_cacheable_prompt_tokens"] < r["num_total_prompt_tokens"], r
