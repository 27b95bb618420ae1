"""Each run of a sweep draws its own sessions: seed + its index, unless the sweep varies `seed`.

With one seed, every run of a sweep sent the very same prompts, and a server that caches prompts
(vLLM does by default) answered the later runs from its cache: a sweep over arrival rates showed TTFC
falling 20-fold from the first run to the second. A capacity search's attempts already had seed +
iteration. Real `veeksha-run` against the simulated server; the seed each run used is its config.yml's.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import yaml

from tests.runner.helpers import run_cli

CONFIG = """
output_dir: out
seed: SEED
server: {type: simulated}
runtime: {max_sessions: 3}
traffic_scheduler: {type: rate, interval_generator: {type: poisson, arrival_rate: !expand [20, 30, 40]}}
"""


def member_seeds(tmp_path: Path) -> list[int]:
    (sweep,) = (tmp_path / "out").iterdir()
    manifest = orjson.loads((sweep / "sweep_manifest.json").read_bytes())
    dirs = [sweep / entry["run_dir"] for entry in manifest["runs"]]
    return [yaml.safe_load((d / "config.yml").read_text())["seed"] for d in dirs]


def test_each_run_of_a_sweep_has_its_own_seed(tmp_path: Path) -> None:
    (tmp_path / "s.veeksha.yml").write_text(CONFIG.replace("SEED", "7"))
    proc = run_cli(["--config", "s.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert member_seeds(tmp_path) == [7, 8, 9]


def test_a_sweep_over_seeds_keeps_the_seeds_it_names(tmp_path: Path) -> None:
    (tmp_path / "s.veeksha.yml").write_text(
        CONFIG.replace("SEED", "!expand [5, 50]").replace("!expand [20, 30, 40]", "20")
    )
    proc = run_cli(["--config", "s.veeksha.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert member_seeds(tmp_path) == [5, 50]
