"""Client and server token counts side by side: with `client.tokenizer` set and a server that reports
usage, every request carries both counts and the run reports how far they disagree.

The simulated server counts with the approximation (about 1.3 tokens a word); the client here uses a
small BPE tokenizer trained on the prompt words, so the two deliberately disagree.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from veeksha.shared.records import COUNT_SERVER

from tests.runner.helpers import only_run_dir, read_jsonl, run_cli
from tests.runner.sessions.test_prompts import train_tokenizer

CONFIG = """
seed: 9
output_dir: out
server: {type: simulated, decode_step_base: 0.001, decode_step_per_seq: 0}
client: {tokenizer: tok.json}
traffic_scheduler: {type: rate, interval_generator: {type: poisson, arrival_rate: 20}}
runtime: {max_sessions: 8}
session_generator:
  type: synthetic
  output_spec: {text: {output_length_generator: 40}}
"""


def test_a_different_tokenizer_is_reported_per_request_in_the_summary_and_by_a_health_check(
    tmp_path: Path,
) -> None:
    train_tokenizer(tmp_path / "tok.json", vocab_size=300)
    (tmp_path / "c.veeksha.yml").write_text(CONFIG)
    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")

    records = read_jsonl(paths.request_records)
    assert len(records) == 8 and all(r["token_count_source"] == COUNT_SERVER for r in records)
    assert all(r["num_output_tokens"] == 40 for r in records)  # the server's count stays the record's
    assert all(r["client_output_tokens"] and r["client_output_tokens"] != 40 for r in records)
    assert all(r["client_prompt_tokens"] for r in records)

    stats = orjson.loads(paths.summary_stats.read_bytes())
    assert stats["num_output_token_comparisons"] == 8 and stats["output_token_mismatch_fraction"] == 1.0
    assert stats["output_token_mean_relative_difference"] > 0.05
    checks = {c["name"]: c for c in orjson.loads(paths.health_checks_json.read_bytes())["checks"]}
    assert checks["token_counts"]["result"] == "FAILED"
    assert "token_counts" in proc.stdout  # the console names the failed check


def test_without_a_tokenizer_no_comparison_is_made(tmp_path: Path) -> None:
    (tmp_path / "c.veeksha.yml").write_text(CONFIG.replace("client: {tokenizer: tok.json}\n", ""))
    proc = run_cli(["--config", "c.veeksha.yml", "--runtime.max_sessions", "3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    assert all(r["client_output_tokens"] is None for r in read_jsonl(paths.request_records))
    checks = {c["name"]: c for c in orjson.loads(paths.health_checks_json.read_bytes())["checks"]}
    assert checks["token_counts"]["result"] == "SKIPPED"
