"""Only the run directory's own files (issue 8 §2): links out of it, special files, odd names, config.yml.

Each edge case builds a real directory on disk; the last ones run `veeksha-upload` (offline) as a
subprocess with a timeout, so a FIFO that is opened fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from veeksha.shared.errors import ContractError
from veeksha.shared.paths import (
    CAPSEARCH_ATTEMPTS_CSV,
    CAPSEARCH_RESULTS,
    SWEEP_SUMMARY_CSV,
    SWEEP_SUMMARY_JSON,
)
from veeksha.uploader.groups import read_capsearch, read_sweep
from veeksha.uploader.reader import read_config, read_run_dir

from tests.uploader.builders import RunSpec, build_capsearch, build_run, build_sweep
from tests.uploader.conftest import Home, lines_for, upload
from tests.uploader.wandb_records import offline_run_dirs, read_offline_run

OUTSIDE_TEXT = "root:x:0:0:OUTSIDE-SECRET-LINE"
# Ten times ten times ... : 2 * 10**6 values from a few hundred bytes.
ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcde", "bcdef", strict=True))
    + "g: [*f, *f]\n"
)
QUANTILES = "cdf,value\n" + "".join(f"{i / 100},{i}\n" for i in range(101))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the run directory holding what a link must never reach."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "passwd").write_text(OUTSIDE_TEXT)
    (folder / "quantiles.csv").write_text(QUANTILES)
    (folder / "summary.json").write_text('{"num_requests": 1}')
    return folder


def test_a_link_out_of_the_directory_is_not_collected_and_is_named(tmp_path: Path, outside: Path) -> None:
    root = build_run(tmp_path / "out")
    (root / "metrics" / "x.json").symlink_to(outside / "passwd")
    (root / "metrics" / "stolen.csv").symlink_to(outside / "quantiles.csv")
    data = read_run_dir(root)
    assert "metrics/x.json" not in data.files and "metrics/stolen.csv" not in data.files
    assert "stolen" not in data.quantiles
    assert any("metrics/x.json" in w and "outside the run directory" in w for w in data.warnings)
    assert any("metrics/stolen.csv" in w for w in data.warnings)


def test_a_link_that_stays_inside_is_followed(tmp_path: Path) -> None:
    root = build_run(tmp_path)
    (root / "metrics" / "ttfc_copy.csv").symlink_to("ttfc.csv")
    data = read_run_dir(root)
    assert "metrics/ttfc_copy.csv" in data.files and "ttfc_copy" in data.quantiles
    assert data.warnings == []


def test_a_metrics_folder_linked_elsewhere_gives_nothing(tmp_path: Path, outside: Path) -> None:
    root = build_run(tmp_path / "out")
    traces = root / "traces"
    for p in traces.iterdir():
        p.unlink()
    traces.rmdir()
    traces.symlink_to(outside, target_is_directory=True)
    data = read_run_dir(root)
    assert not [f for f in data.files if f.startswith("traces/")]
    assert any("traces/passwd" in w for w in data.warnings)


def test_a_needed_file_linked_outside_fails_naming_it(tmp_path: Path, outside: Path) -> None:
    root = build_run(tmp_path / "out")
    summary = root / "metrics" / "summary_stats.json"
    summary.unlink()
    summary.symlink_to(outside / "summary.json")
    with pytest.raises(ContractError, match=r"metrics/summary_stats.json.*outside the run directory"):
        read_run_dir(root)


def test_special_files_are_skipped_without_being_opened(tmp_path: Path) -> None:
    root = build_run(tmp_path)
    os.mkfifo(root / "metrics" / "pipe.json")
    os.mkfifo(root / "metrics" / "pipe.csv")
    data = read_run_dir(root)  # opening either FIFO would block here for ever
    assert "metrics/pipe.json" not in data.files and "pipe" not in data.quantiles
    assert any("metrics/pipe.json" in w and "FIFO" in w for w in data.warnings)


def test_a_needed_file_that_is_a_fifo_fails_naming_it(tmp_path: Path) -> None:
    root = build_run(tmp_path)
    (root / "metrics" / "throughput_metrics.json").unlink()
    os.mkfifo(root / "metrics" / "throughput_metrics.json")
    with pytest.raises(ContractError, match=r"throughput_metrics.json.*FIFO"):
        read_run_dir(root)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("client: !include other.yml\n", r"config.yml line 1: YAML tag !include is not allowed"),
        ("client: !include config.yml\n", r"config.yml line 1: YAML tag !include is not allowed"),
        ("a: !expand [1, 2]\n", r"YAML tag !expand is not allowed"),
        ("a: !!python/object:os.system {}\n", r"YAML tag !!python/object:os.system is not allowed"),
        ("a: 1\na: 2\n", r"duplicate key"),
        (
            ALIAS_BOMB,
            r"more than 100000 values",
        ),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"nested too deeply"),
        ("a: '" + "x" * (1 << 20) + "'\n", r"config.yml is \d+ bytes; at most 1048576"),
    ],
    ids=["include", "self-include", "expand", "python-tag", "duplicate", "alias-bomb", "deep", "too-big"],
)
def test_config_yml_is_plain_bounded_data(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "other.yml").write_text("api_key: from-outside\n")
    path = tmp_path / "config.yml"
    path.write_text(text)
    with pytest.raises(ContractError, match=message):
        read_config(path)


def test_config_yml_as_the_runner_writes_it_reads_back(tmp_path: Path) -> None:
    root = build_run(tmp_path)
    config = read_config(root / "config.yml")
    assert config["client"]["model"] == "test-model"


def test_a_sweep_summary_leaves_out_links_out_of_the_sweep(tmp_path: Path, outside: Path) -> None:
    root = build_sweep(tmp_path / "out")
    (root / SWEEP_SUMMARY_CSV).unlink()
    (root / SWEEP_SUMMARY_CSV).symlink_to(outside / "passwd")
    data = read_sweep(root)
    assert SWEEP_SUMMARY_CSV not in data.files and SWEEP_SUMMARY_JSON in data.files
    assert any(SWEEP_SUMMARY_CSV in w and "outside" in w for w in data.warnings)


def test_a_sweep_summary_file_linked_outside_fails_naming_it(tmp_path: Path, outside: Path) -> None:
    root = build_sweep(tmp_path / "out")
    (root / SWEEP_SUMMARY_JSON).unlink()
    (root / SWEEP_SUMMARY_JSON).symlink_to(outside / "summary.json")
    with pytest.raises(ContractError, match=rf"{SWEEP_SUMMARY_JSON}.*outside"):
        read_sweep(root)


def test_a_capacity_search_with_fifos_does_not_hang(tmp_path: Path) -> None:
    root = build_capsearch(tmp_path)
    (root / CAPSEARCH_ATTEMPTS_CSV).unlink()
    os.mkfifo(root / CAPSEARCH_ATTEMPTS_CSV)
    data = read_capsearch(root)  # the attempts table comes from the results' history instead
    assert CAPSEARCH_ATTEMPTS_CSV not in data.files and len(data.table) == 3
    assert any("FIFO" in w for w in data.warnings)
    (root / CAPSEARCH_RESULTS).unlink()
    os.mkfifo(root / CAPSEARCH_RESULTS)
    with pytest.raises(ContractError, match=rf"{CAPSEARCH_RESULTS}.*FIFO"):
        read_capsearch(root)


# ---------------------------------------------------------------- the command, end to end


def test_upload_names_what_it_left_out_and_never_hangs(tmp_path: Path, outside: Path, home: Home) -> None:
    root = build_run(tmp_path / "out")
    (root / "metrics" / "x.json").symlink_to(outside / "passwd")
    os.mkfifo(root / "traces" / "pipe")
    result = upload([str(root), "--mode", "offline"], home, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line.strip() for line in result.stdout.splitlines() if "warning:" in line]
    assert any("metrics/x.json" in w and "outside the run directory" in w for w in warnings), result.stdout
    assert any("traces/pipe" in w and "FIFO" in w for w in warnings), result.stdout
    (sync_dir,) = offline_run_dirs(root)
    entries = read_offline_run(sync_dir).artifact("veeksha-run").entries
    assert "metrics/x.json" not in entries and "traces/pipe" not in entries
    for path in (root / "wandb").rglob("*"):
        assert not path.is_file() or OUTSIDE_TEXT.encode() not in path.read_bytes(), path


def test_json_output_carries_the_warnings(tmp_path: Path, outside: Path, home: Home) -> None:
    root = build_run(tmp_path / "out")
    (root / "metrics" / "x.json").symlink_to(outside / "passwd")
    result = upload([str(root), "--dry-run", "--json"], home, cwd=tmp_path, timeout=120)
    (entry,) = json.loads(result.stdout)["results"]
    assert any("metrics/x.json" in w for w in entry["warnings"])


def test_a_wandb_folder_that_is_a_link_is_refused(tmp_path: Path, home: Home) -> None:
    root = build_run(tmp_path / "out")
    victim = tmp_path / "victim"
    (victim / "data").mkdir(parents=True)
    (victim / "data" / "keep.txt").write_text("keep")
    (victim / "redacted").mkdir()
    (root / "wandb").symlink_to(victim, target_is_directory=True)
    before = sorted(p.relative_to(victim) for p in victim.rglob("*"))
    result = upload([str(root), "--mode", "offline", "--force"], home, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    (failed,) = lines_for(result.stdout, "failed")
    assert "wandb" in failed and "symbolic link" in failed
    assert sorted(p.relative_to(victim) for p in victim.rglob("*")) == before
    assert (victim / "data" / "keep.txt").read_text() == "keep"


def test_an_include_in_config_yml_fails_that_directory_only(tmp_path: Path, home: Home) -> None:
    out = tmp_path / "out"
    bad, good = build_run(out, RunSpec(seed=1)), build_run(out, RunSpec(seed=2))
    (bad / "config.yml").write_text("client: !include config.yml\n")
    result = upload([str(out), "-r", "--mode", "offline"], home, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = lines_for(result.stdout, "failed")
    assert bad.name in failed and "config.yml line 1: YAML tag !include is not allowed" in failed
    assert len(lines_for(result.stdout, "uploaded")) == 1 and (good / "wandb_run.json").exists()


def test_non_utf8_names_are_reported_by_name(tmp_path: Path, home: Home) -> None:
    out = tmp_path / "out"
    odd_file = build_run(out, RunSpec(seed=1))
    os.close(os.open(os.fsencode(odd_file) + b"/metrics/\xff.json", os.O_CREAT | os.O_WRONLY))
    plain = build_run(out, RunSpec(seed=2))
    odd_dir = Path(os.fsdecode(os.fsencode(out) + b"/run-\xfe"))
    plain.rename(odd_dir)

    result = upload([str(out), "--recursive", "--mode", "offline"], home, cwd=tmp_path, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = lines_for(result.stdout, "failed")
    assert "run-\\xfe" in failed and "not valid UTF-8" in failed
    lines = result.stdout.splitlines()
    assert any("metrics/\\xff.json" in line and "not valid UTF-8" in line for line in lines), result.stdout
    assert lines_for(result.stdout, "uploaded")

    result = upload([str(out), "--recursive", "--dry-run", "--json", "--force"], home, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["counts"]["failed"] == 1 and doc["exit_code"] == 1
    paths = [r["path"] for r in doc["results"]]
    assert any(p.endswith("run-\\xfe") for p in paths)


def test_fifos_in_place_of_the_uploaders_own_files_do_not_hang(tmp_path: Path, home: Home) -> None:
    root = build_run(tmp_path / "out")
    os.mkfifo(root / "wandb_run.json")
    os.mkfifo(root / ".veeksha-upload.pending")
    result = upload([str(root), "--mode", "offline"], home, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((root / "wandb_run.json").read_text())["mode"] == "offline"


@pytest.mark.parametrize("name", ["data", "redacted"])
def test_a_link_where_the_uploader_stages_files_is_refused(tmp_path: Path, home: Home, name: str) -> None:
    root = build_run(tmp_path / "out")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (root / "wandb").mkdir()
    (root / "wandb" / name).symlink_to(victim, target_is_directory=True)
    result = upload([str(root), "--mode", "offline"], home, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    (failed,) = lines_for(result.stdout, "failed")
    assert f"wandb/{name}" in failed and "symbolic link" in failed
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]


def test_a_lock_file_that_is_a_link_creates_nothing_elsewhere(tmp_path: Path, home: Home) -> None:
    root = build_run(tmp_path / "out")
    elsewhere = tmp_path / "created-by-the-lock"
    (root / ".veeksha-upload.lock").symlink_to(elsewhere)
    result = upload([str(root), "--mode", "offline"], home, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    (failed,) = lines_for(result.stdout, "failed")
    assert ".veeksha-upload.lock" in failed and "symbolic link" in failed
    assert not elsewhere.exists()


def test_hidden_files_are_not_outputs(tmp_path: Path) -> None:
    # A plot that failed on a full disk left `.ttfc.png.tmp.png` in metrics/: it was uploaded as
    # an image and a file of the artifact.
    root = build_run(tmp_path / "out")
    (root / "metrics" / ".ttfc.png.tmp.png").write_bytes(b"\x89PNG half")
    (root / "metrics" / ".summary_stats.json.tmp").write_text("{")
    data = read_run_dir(root)
    assert not [f for f in data.files if "/." in f] and not [i for i in data.images if "/." in i]
