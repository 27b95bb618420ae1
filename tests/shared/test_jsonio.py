"""write_atomic never makes the folder it writes into: a run directory moved or deleted mid-run must
not come back as a stub holding only the files written after (run.json, server.log)."""

from __future__ import annotations

from pathlib import Path

import pytest
from veeksha.shared.jsonio import naming_errors, require_folder, write_atomic, write_json


def test_a_write_into_a_folder_that_is_gone_fails_naming_the_file_and_the_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "out" / "run"
    target = run_dir / "run.json"

    with pytest.raises(FileNotFoundError) as e:
        write_json(target, {"status": "failed"})

    assert not (tmp_path / "out").exists()  # not made again
    assert e.value.filename == str(target)  # not the temporary file's name
    gone = tmp_path / "out"
    assert (
        str(e.value)
        == f"[Errno 2] No such file or directory ({gone} was moved or deleted while in use): '{target}'"
    )


def test_a_write_into_a_folder_that_is_there_replaces_the_file(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.txt", "one")
    write_atomic(tmp_path / "a.txt", b"two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left


def test_an_append_whose_folder_is_gone_says_so(tmp_path: Path) -> None:
    (tmp_path / "run" / "metrics").mkdir(parents=True)
    path = tmp_path / "run" / "metrics" / "timeseries.csv"
    (tmp_path / "run").rename(tmp_path / "moved")

    with pytest.raises(FileNotFoundError, match=r"\(.*/run was moved or deleted while in use\)"):
        with naming_errors(path), path.open("a") as f:
            f.write("row\n")


def test_require_folder(tmp_path: Path) -> None:
    require_folder(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"\(.*/search was moved or deleted while in use\): '.*/runs'"
    ):
        require_folder(tmp_path / "search" / "runs")
    assert not (tmp_path / "search").exists()
