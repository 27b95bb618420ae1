"""A run directory whose copy was interrupted (`cp`, `rsync`, `head -c`): files cut short.

A cut image or quantile table is left out of the upload with a `warning: not uploaded:` line naming
it, as an unusable file is (run_files.py), and the rest uploads; a cut header of an appended CSV is
said, not silently read as "no rows". Real files, the real `veeksha-upload` process, the real SDK
offline or against the loopback fake W&B server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from veeksha.shared.paths import DISTRIBUTION_METRICS, RunPaths
from veeksha.uploader.reader import read_run_dir

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, online_env, upload
from tests.uploader.fake_wandb import FakeWandb
from tests.uploader.wandb_records import offline_run_dirs, read_offline_run

QUANTILE_ROWS = 101  # metrics/<metric>.csv: cdf 0.00 … 1.00 (outputs.md)


def cut(path: Path, size: int) -> None:
    """What `head -c SIZE original > copy` leaves."""
    path.write_bytes(path.read_bytes()[:size])


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return build_run(tmp_path / "copy", RunSpec(seed=31, seconds=3))


# ---------------------------------------------------------------- images


def test_a_cut_image_is_left_out_with_a_warning_naming_it(run_dir: Path) -> None:
    png = RunPaths(run_dir).distribution_png("ttfc")
    cut(png, png.stat().st_size // 2)
    data = read_run_dir(run_dir)
    assert "metrics/ttfc.png" not in data.images and "metrics/ttfc.png" not in data.files
    assert len(data.images) == len(DISTRIBUTION_METRICS) - 1
    (warning,) = data.warnings
    assert warning.startswith("not uploaded: metrics/ttfc.png is not a readable image (")


def test_a_file_named_png_that_is_no_image_is_left_out_too(run_dir: Path) -> None:
    (RunPaths(run_dir).metrics / "notes.png").write_text("not an image\n")
    data = read_run_dir(run_dir)
    assert "metrics/notes.png" not in data.images and "metrics/notes.png" not in data.files
    (warning,) = data.warnings
    assert warning.startswith("not uploaded: metrics/notes.png is not a readable image (")


def test_a_cut_image_is_said_by_dry_run_and_the_rest_uploads_offline(run_dir: Path, home: Home) -> None:
    png = RunPaths(run_dir).distribution_png("ttfc")
    cut(png, png.stat().st_size // 2)
    dry = upload([str(run_dir), "--dry-run"], home, cwd=run_dir.parent)
    assert dry.returncode == 0 and lines_for(dry.stdout, "would upload"), dry.stdout + dry.stderr
    assert "warning: not uploaded: metrics/ttfc.png is not a readable image" in dry.stdout

    done = upload([str(run_dir), "--mode", "offline"], home, cwd=run_dir.parent)
    assert done.returncode == 0 and lines_for(done.stdout, "uploaded"), done.stdout + done.stderr
    assert "warning: not uploaded: metrics/ttfc.png is not a readable image" in done.stdout
    (sync_dir,) = offline_run_dirs(run_dir)
    run = read_offline_run(sync_dir)
    images = run.media_keys("image-file")
    assert len(images) == len(DISTRIBUTION_METRICS) - 1 and "plots/ttfc" not in images
    assert "metrics/ttfc.png" not in run.artifact("veeksha-run").entries


def test_a_cut_image_creates_no_failed_online_run(run_dir: Path, home: Home, fake_wandb: FakeWandb) -> None:
    """It failed inside the SDK session, after the W&B run existed: a run left failed at every attempt."""
    png = RunPaths(run_dir).distribution_png("ttfc")
    cut(png, png.stat().st_size // 2)
    done = upload([str(run_dir), "--mode", "online"], home, cwd=run_dir.parent, env=online_env(fake_wandb))
    assert done.returncode == 0 and lines_for(done.stdout, "uploaded"), done.stdout + done.stderr
    (run,) = fake_wandb.runs.values()
    assert run.state == "finished"


# ---------------------------------------------------------------- quantile tables


def test_a_quantile_table_cut_mid_line_is_left_out_with_a_warning(run_dir: Path) -> None:
    """`head -c 700`: 36 rows, the last value cut short (it still parses: a wrong number)."""
    csv_path = RunPaths(run_dir).distribution_csv("tbc")
    cut(csv_path, 700)
    assert not csv_path.read_bytes().endswith(b"\n")
    data = read_run_dir(run_dir)
    assert "tbc" not in data.quantiles and "metrics/tbc.csv" not in data.files
    assert len(data.quantiles) == len(DISTRIBUTION_METRICS) - 1
    (warning,) = data.warnings
    assert warning.startswith("not uploaded: metrics/tbc.csv is cut off")


def test_a_quantile_table_cut_at_a_line_end_is_left_out_for_its_missing_rows(run_dir: Path) -> None:
    csv_path = RunPaths(run_dir).distribution_csv("tbc")
    lines = csv_path.read_bytes().splitlines(keepends=True)
    csv_path.write_bytes(b"".join(lines[:37]))  # the header and 36 rows, each whole
    data = read_run_dir(run_dir)
    assert "tbc" not in data.quantiles and "metrics/tbc.csv" not in data.files
    (warning,) = data.warnings
    assert "metrics/tbc.csv" in warning and f"36 of its {QUANTILE_ROWS} rows" in warning


def test_a_quantile_table_cut_inside_its_header_is_left_out_with_a_warning(run_dir: Path) -> None:
    """`cdf,va`: no longer a `cdf,value` table by its header, still one by its name."""
    csv_path = RunPaths(run_dir).distribution_csv("tbc")
    cut(csv_path, 6)
    data = read_run_dir(run_dir)
    assert "tbc" not in data.quantiles and "metrics/tbc.csv" not in data.files
    (warning,) = data.warnings
    assert warning.startswith("not uploaded: metrics/tbc.csv is cut off")


def test_a_whole_quantile_table_with_empty_values_is_kept(run_dir: Path) -> None:
    """A metric without samples: 101 rows, every value empty (evaluation writes it so)."""
    csv_path = RunPaths(run_dir).distribution_csv("tbc")
    csv_path.write_text("cdf,value\n" + "".join(f"{i / 100:.2f},\n" for i in range(QUANTILE_ROWS)))
    data = read_run_dir(run_dir)
    assert data.quantiles["tbc"] == [] and "metrics/tbc.csv" in data.files and data.warnings == []


def test_a_cut_quantile_table_uploads_the_rest_and_says_so(run_dir: Path, home: Home) -> None:
    cut(RunPaths(run_dir).distribution_csv("tbc"), 700)
    done = upload([str(run_dir), "--mode", "offline"], home, cwd=run_dir.parent)
    assert done.returncode == 0 and lines_for(done.stdout, "uploaded"), done.stdout + done.stderr
    assert "warning: not uploaded: metrics/tbc.csv is cut off" in done.stdout
    (sync_dir,) = offline_run_dirs(run_dir)
    tables = read_offline_run(sync_dir).media_keys("table-file")
    assert "quantiles/tbc" not in tables and "quantiles/ttfc" in tables


# ---------------------------------------------------------------- appended CSVs


def test_a_timeseries_cut_inside_its_header_says_so(run_dir: Path) -> None:
    """No complete line at all: no rows, and a warning rather than silence."""
    cut(RunPaths(run_dir).timeseries_csv, 20)
    data = read_run_dir(run_dir)
    assert data.timeseries == []
    (warning,) = data.warnings
    assert "metrics/timeseries.csv" in warning and "header" in warning and "cut off" in warning


def test_a_timeseries_cut_inside_its_header_uploads_the_rest_with_a_warning(
    run_dir: Path, home: Home
) -> None:
    cut(RunPaths(run_dir).timeseries_csv, 20)
    done = upload([str(run_dir), "--mode", "offline"], home, cwd=run_dir.parent)
    assert done.returncode == 0 and lines_for(done.stdout, "uploaded"), done.stdout + done.stderr
    assert "warning: metrics/timeseries.csv" in done.stdout
