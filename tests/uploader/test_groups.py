"""Sweeps and capacity searches: a shared group, their tags, the best attempt, one summary run each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from veeksha.shared import __version__
from veeksha.shared.jsonio import read_json, write_json
from veeksha.shared.paths import CAPSEARCH_ATTEMPTS_CSV, CAPSEARCH_RESULTS, SWEEP_MANIFEST, SWEEP_SUMMARY_JSON
from veeksha.uploader.groups import capsearch_members, read_capsearch, read_sweep, sweep_members
from veeksha.uploader.redaction import Redactor
from veeksha.uploader.wandb_summary import summary_config

from tests.uploader.builders import RunSpec, build_capsearch, build_run, build_sweep
from tests.uploader.conftest import Home, lines_for, upload
from tests.uploader.wandb_records import OfflineRun, offline_run_dirs, read_offline_run

VEEKSHA_RUN = str(Path(sys.executable).parent / "veeksha-run")


@dataclass
class Tree:
    out: Path
    sweep: Path
    capsearch: Path
    stdout: str


def offline_run(directory: Path) -> OfflineRun:
    (sync_dir,) = offline_run_dirs(directory)
    return read_offline_run(sync_dir)


def table(run: OfflineRun, key: str) -> list[dict]:
    data = json.loads((run.sync_dir / "files" / run.summary[key]["path"]).read_text())
    return [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, home: Home) -> Tree:
    out = tmp_path_factory.mktemp("out")
    sweep = build_sweep(out, count=2, wandb={"tags": ["cfg-tag"]})
    capsearch = build_capsearch(out, values=(2.0, 4.0, 3.0), best=2)
    # Two containers given as paths (no --recursive): each stands for its runs plus a summary run.
    result = upload([str(sweep), str(capsearch), "--mode", "offline", "--jobs", "2"], home, cwd=out)
    assert result.returncode == 0, result.stdout + result.stderr
    return Tree(out, sweep, capsearch, result.stdout)


def test_every_run_and_one_summary_per_container_is_uploaded(tree: Tree) -> None:
    assert len(lines_for(tree.stdout, "uploaded")) == 2 + 1 + 3 + 1
    assert "(sweep summary)" in tree.stdout and "(capacity-search summary)" in tree.stdout


def test_sweep_runs_share_the_sweep_group_and_tag(tree: Tree) -> None:
    runs = [offline_run(d) for d in sorted(tree.sweep.iterdir()) if (d / "run.json").exists()]
    assert {r.run.run_group for r in runs} == {tree.sweep.name}
    for r in runs:
        assert r.tags == ["cfg-tag", "sweep"]
        assert r.user_config()["run_kind"] == "sweep_run"


def test_sweep_summary_run_logs_the_summary_table(tree: Tree) -> None:
    run = offline_run(tree.sweep)
    assert run.run.run_group == tree.sweep.name
    assert run.tags == ["cfg-tag", "sweep", "summary"]
    expected = orjson.loads((tree.sweep / SWEEP_SUMMARY_JSON).read_bytes())
    assert table(run, "sweep_summary") == expected["runs"]
    assert run.summary["sweep_id"] == expected["sweep_id"]
    assert run.summary["num_all_slos_met"] == 1
    assert sorted(run.artifact("veeksha-sweep").entries) == [
        "sweep_manifest.json",
        "sweep_summary.csv",
        "sweep_summary.json",
    ]


def test_capsearch_attempts_are_named_grouped_and_the_best_is_tagged(tree: Tree) -> None:
    results = orjson.loads((tree.capsearch / CAPSEARCH_RESULTS).read_bytes())
    best = Path(results["best_run_dir"]).name
    seen = {}
    for d in sorted((tree.capsearch / "runs").iterdir()):
        run = offline_run(d)
        seen[d.name] = run
        assert run.run.run_group == tree.capsearch.name
        assert run.user_config()["run_kind"] == "capsearch_attempt"
        assert ("best" in run.tags) == (d.name == best)
        assert "capsearch" in run.tags
    names = sorted(r.run.display_name for r in seen.values())
    assert names == ["attempt-0 arrival_rate=2.0", "attempt-1 arrival_rate=4.0", "attempt-2 arrival_rate=3.0"]


def test_capsearch_summary_run_logs_attempts_and_the_result(tree: Tree) -> None:
    run = offline_run(tree.capsearch)
    results = orjson.loads((tree.capsearch / CAPSEARCH_RESULTS).read_bytes())
    assert run.tags == ["capsearch", "summary"]
    assert run.summary["best_value"] == results["best_value"] == 3.0
    assert run.summary["searched_knob"] == results["searched_knob"]
    attempts = table(run, "attempts")
    assert [(a["iteration"], a["value"], a["passed"]) for a in attempts] == [
        (h["iteration"], h["value"], h["passed"]) for h in results["history"]
    ]
    assert run.user_config()["run_kind"] == "capsearch_summary"
    assert "benchmark_config" in run.user_config()  # the search's own config, redacted
    files = sorted(run.artifact("veeksha-capsearch").entries)
    assert files == ["capacity_search_attempts.csv", "capacity_search_results.json", "config.yml"]


@pytest.mark.parametrize(
    "status", ["completed", None]
)  # None: an older manifest, ended once it lists `count` runs
def test_a_finished_sweep_without_its_summary_file_is_skipped_naming_the_file_and_the_fix(
    tmp_path: Path, home: Home, status: str | None
) -> None:
    root = build_sweep(tmp_path, count=1)
    if status is not None:
        write_json(root / SWEEP_MANIFEST, {**read_json(root / SWEEP_MANIFEST), "status": status})
    (root / SWEEP_SUMMARY_JSON).unlink()
    result = upload([str(root), "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (skip,) = lines_for(result.stdout, "skipped")
    assert f"{SWEEP_SUMMARY_JSON} is missing: run `veeksha-run evaluate {root}` to rebuild it" in skip
    assert "not finished" not in skip

    # The advice works: evaluate on a sweep that has ended rewrites its table from the runs.
    evaluate = subprocess.run(
        [VEEKSHA_RUN, "evaluate", str(root)], env=home.env(), capture_output=True, text=True, timeout=120
    )
    assert evaluate.returncode == 0, evaluate.stdout + evaluate.stderr
    again = upload([str(root), "--dry-run"], home, cwd=tmp_path)
    assert any("(sweep summary)" in line for line in lines_for(again.stdout, "would upload")), again.stdout


def test_a_capacity_search_still_running_is_skipped_not_summarised(tmp_path: Path, home: Home) -> None:
    """The runner rewrites capacity_search_results.json after every attempt with status running."""
    root = build_capsearch(tmp_path)
    results = read_json(root / CAPSEARCH_RESULTS)
    write_json(root / CAPSEARCH_RESULTS, {**results, "status": "running"})
    result = upload([str(root), "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert any("capacity search not finished" in line for line in lines_for(result.stdout, "skipped"))


def test_the_best_attempt_is_retagged_when_the_search_ends(tmp_path: Path, home: Home) -> None:
    """The runner uploads each attempt as it finishes, while the best is not known yet; at the end it
    uploads the search directory, which must re-upload the best attempt with the `best` tag."""
    root = build_capsearch(tmp_path, values=(2.0, 4.0, 3.0), best=2)
    final = read_json(root / CAPSEARCH_RESULTS)
    interim_best = final["history"][0]["run_dir"]  # best so far, mid-search
    write_json(root / CAPSEARCH_RESULTS, {**final, "status": "running", "best_run_dir": interim_best})
    attempts = sorted(d for d in (root / "runs").iterdir() if (d / "run.json").exists())
    during = upload([*map(str, attempts), "--mode", "offline"], home, cwd=tmp_path)
    assert len(lines_for(during.stdout, "uploaded")) == 3, during.stdout + during.stderr
    assert all("best" not in offline_run(d).tags for d in attempts)  # not known while running

    write_json(root / CAPSEARCH_RESULTS, {**final, "status": "completed"})
    after = upload([str(root), "--mode", "offline"], home, cwd=tmp_path)
    assert after.returncode == 0, after.stdout + after.stderr
    best = attempts[2]
    uploaded = lines_for(after.stdout, "uploaded")
    assert sorted(uploaded) == sorted(u for u in uploaded if str(best) in u or "summary" in u)
    assert len(uploaded) == 2 and len(lines_for(after.stdout, "skipped")) == 2  # the others: unchanged
    assert offline_run(best).tags == ["capsearch", "best"]
    assert orjson.loads((best / "wandb_run.json").read_bytes())["tags"] == ["capsearch", "best"]


def dry_run_line(stdout: str, run_dir: Path) -> str:
    [line] = [x for x in lines_for(stdout, "would upload") if run_dir.name in x]
    return line


@pytest.mark.parametrize("parent", ["sweep-nightly", "capsearch-nightly/runs"])
def test_a_folder_only_named_like_a_container_holds_plain_runs(
    tmp_path: Path, home: Home, parent: str
) -> None:
    """A user's `output_dir: sweep-nightly` is no sweep: a folder is a sweep only when it holds
    sweep_manifest.json, a capacity search when an attempt's run.json says so (run.json decides)."""
    run_dir = build_run(tmp_path / parent, RunSpec(seed=7))
    result = upload([str(tmp_path), "--recursive", "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"name={run_dir.name!r} group=None tags=[]" in dry_run_line(result.stdout, run_dir)
    assert "summary" not in result.stdout  # no never-finished container reported
    folder = upload([str(tmp_path / parent.split("/")[0]), "--dry-run"], home, cwd=tmp_path)
    assert folder.returncode == 2 and "use --recursive" in folder.stderr


def test_a_sweep_still_running_is_a_sweep_from_its_start(tmp_path: Path, home: Home) -> None:
    """The runner writes sweep_manifest.json (status running) before the sweep's first run."""
    root = build_sweep(tmp_path, count=2)
    first, second = sorted(d for d in root.iterdir() if (d / "run.json").exists())
    manifest = read_json(root / SWEEP_MANIFEST)
    write_json(root / SWEEP_MANIFEST, {**manifest, "status": "running", "runs": manifest["runs"][:1]})
    (root / SWEEP_SUMMARY_JSON).unlink()
    write_json(
        second / "run.json", {**read_json(second / "run.json"), "status": "running", "finished_at": None}
    )
    result = upload([str(root), "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"group={root.name!r} tags=['sweep']" in dry_run_line(result.stdout, first)
    skipped = lines_for(result.stdout, "skipped")
    assert any(second.name in s and "still running" in s for s in skipped)
    assert any("(sweep summary)" in s and "sweep not finished" in s for s in skipped)


@pytest.mark.parametrize("mode", [[], ["--mode", "offline"]], ids=["no-mode", "offline"])
def test_a_sweep_stopped_before_its_first_run_is_skipped_as_nothing_to_upload(
    tmp_path: Path, home: Home, mode: list[str]
) -> None:
    """Stopped in its first second (a fuzzer's SIGHUP): a manifest, every combination `not_run`, and no
    run directory, so no config that names a W&B mode. The upload failed for want of an online API key;
    with --mode offline it wrote a W&B summary run of nothing."""
    root = build_sweep(tmp_path, count=1)
    for run_dir in sweep_members(root):
        shutil.rmtree(run_dir)
    manifest = read_json(root / SWEEP_MANIFEST)
    runs = [{**entry, "run_dir": None, "status": "not_run"} for entry in manifest["runs"]]
    write_json(root / SWEEP_MANIFEST, {**manifest, "status": "interrupted", "runs": runs})

    result = upload([str(root), *mode], home, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    (skip,) = lines_for(result.stdout, "skipped")
    assert root.name in skip and "none of its runs has a directory yet: nothing to upload" in skip
    assert not (root / "wandb").exists()


def test_a_runless_sweep_whose_manifest_is_cut_off_still_fails_naming_the_file(
    tmp_path: Path, home: Home
) -> None:
    root = build_sweep(tmp_path, count=1)
    for run_dir in sweep_members(root):
        shutil.rmtree(run_dir)
    (root / SWEEP_MANIFEST).write_text('{"sweep_id": "abc", "runs": [')

    result = upload([str(root), "--mode", "offline"], home, cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = lines_for(result.stdout, "failed")
    assert SWEEP_MANIFEST in failed


def add_unstarted_combination(root: Path, sweep_status: str, entry_status: str) -> None:
    """A third combination in the manifest and the table, whose run never started."""
    manifest = read_json(root / SWEEP_MANIFEST)
    params = {"traffic_scheduler.interval_generator.arrival_rate": 3.0}
    entry = {"index": 2, "run_dir": None, "params": params, "status": entry_status}
    runs = [*manifest["runs"], entry]
    write_json(root / SWEEP_MANIFEST, {**manifest, "count": 3, "status": sweep_status, "runs": runs})
    summary = read_json(root / SWEEP_SUMMARY_JSON)
    rows = [*summary["runs"], {"run_dir": None, "status": entry_status, **params}]
    write_json(root / SWEEP_SUMMARY_JSON, {**summary, "runs": rows})


def test_a_sweep_still_running_says_how_many_of_its_runs_have_ended(tmp_path: Path, home: Home) -> None:
    """The manifest lists every combination from the start: it is the status that says the sweep
    goes on, and the count of entries no longer says how far it got."""
    root = build_sweep(tmp_path, count=2)
    add_unstarted_combination(root, sweep_status="running", entry_status="pending")
    result = upload([str(root), "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (skip,) = [s for s in lines_for(result.stdout, "skipped") if "(sweep summary)" in s]
    assert "sweep not finished (2/3 runs ended" in skip
    assert f"`veeksha-run evaluate {root}`" in skip  # what ends the wait when its process died


def test_a_crashed_sweep_is_summarised_and_its_unstarted_combinations_shown_as_never_run(
    tmp_path: Path, home: Home
) -> None:
    """`crashed` (set by `veeksha-run evaluate` on a sweep whose process died) is a final status."""
    root = build_sweep(tmp_path, count=2)
    add_unstarted_combination(root, sweep_status="crashed", entry_status="pending")
    result = upload([str(root), "--mode", "offline"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(offline_run(root), "sweep_summary")
    assert [(r["run_dir"], r["status"]) for r in rows][2:] == [(None, "not_run")]


def test_a_capacity_search_in_its_first_attempt_is_already_one(tmp_path: Path, home: Home) -> None:
    """capacity_search_results.json appears after the first attempt; the runner uploads (or follows)
    that attempt before it, and the attempt's run.json says it belongs to the search."""
    root = build_capsearch(tmp_path, values=(2.0,), best=0)
    (root / CAPSEARCH_RESULTS).unlink()
    (root / CAPSEARCH_ATTEMPTS_CSV).unlink()
    [attempt] = (root / "runs").iterdir()
    expected = f"name='attempt-0 arrival_rate=2.0' group={root.name!r} tags=['capsearch']"
    alone = upload([str(attempt), "--dry-run"], home, cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert expected in dry_run_line(alone.stdout, attempt)
    whole = upload([str(root), "--dry-run"], home, cwd=tmp_path)
    assert expected in dry_run_line(whole.stdout, attempt)
    (summary,) = lines_for(whole.stdout, "skipped")
    assert "(capacity-search summary)" in summary and "capacity search not finished" in summary


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("count", "3", "count is a string, expected a number"),
        ("runs", 5, "runs is a number, expected a list of objects"),
        ("runs", ["x"], "runs[0] is a string, expected an object"),
    ],
)
def test_a_misshapen_sweep_manifest_fails_the_summary_naming_the_file(
    tmp_path: Path, home: Home, field: str, value: object, message: str
) -> None:
    root = build_sweep(tmp_path, count=1)
    write_json(root / SWEEP_MANIFEST, {**read_json(root / SWEEP_MANIFEST), field: value})
    result = upload([str(root), "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = lines_for(result.stdout, "failed")
    assert f"{SWEEP_MANIFEST}: {message}" in failed


def test_a_misshapen_capacity_search_history_fails_the_summary_naming_the_file(
    tmp_path: Path, home: Home
) -> None:
    """Without the attempts CSV the summary's table is built from the results' history."""
    root = build_capsearch(tmp_path)
    (root / CAPSEARCH_ATTEMPTS_CSV).unlink()
    write_json(root / CAPSEARCH_RESULTS, {**read_json(root / CAPSEARCH_RESULTS), "history": 5})
    result = upload([str(root), "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = lines_for(result.stdout, "failed")
    assert f"{CAPSEARCH_RESULTS}: history is a number, expected a list of objects" in failed


@pytest.mark.parametrize("where", ["config", "flag"])
def test_a_configured_run_name_gets_each_sweep_runs_index(tmp_path: Path, home: Home, where: str) -> None:
    """One run_name would name every run of a sweep alike: each gets `-<index>`, its position in the
    sweep (run.json `sweep.index`). A plain run keeps the name as is; the summary run is `<dir>-summary`."""
    configured = {"run_name": "nightly"} if where == "config" else {}
    root = build_sweep(tmp_path, count=2, wandb=configured)
    plain = build_run(tmp_path / "plain", RunSpec(seed=9, wandb=configured))
    flag = ["--run-name", "nightly"] if where == "flag" else []
    result = upload([str(root), str(plain), "--dry-run", *flag], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for member in sweep_members(root):
        index = read_json(member / "run.json")["sweep"]["index"]
        assert f"name='nightly-{index}'" in dry_run_line(result.stdout, member)
    assert "name='nightly'" in dry_run_line(result.stdout, plain)
    (summary,) = [x for x in lines_for(result.stdout, "would upload") if "(sweep summary)" in x]
    assert f"name='{root.name}-summary'" in summary


def set_veeksha_version(members: list[Path], version: str | None) -> None:
    for member in members:
        info = {k: v for k, v in read_json(member / "run.json").items() if k != "veeksha_version"}
        write_json(member / "run.json", info if version is None else {**info, "veeksha_version": version})


def test_a_summary_run_records_the_veeksha_version_its_directory_was_written_with(tmp_path: Path) -> None:
    """The sweep's manifest and the search's results do not say which version wrote them; their runs'
    run.json do (the same process wrote them all)."""
    sweep, capsearch = build_sweep(tmp_path / "s"), build_capsearch(tmp_path / "c")
    set_veeksha_version(sweep_members(sweep), "0.0.7")
    set_veeksha_version(capsearch_members(capsearch), "0.0.8")
    sweep_config = summary_config(read_sweep(sweep), Redactor())
    assert sweep_config["veeksha_version"] == "0.0.7"
    assert sweep_config["container_id"] == read_json(sweep / SWEEP_MANIFEST)["sweep_id"]
    search_config = summary_config(read_capsearch(capsearch), Redactor())
    assert search_config["veeksha_version"] == "0.0.8"
    [first, *_] = capsearch_members(capsearch)
    assert search_config["container_id"] == read_json(first / "run.json")["capacity_search"]["id"]

    set_veeksha_version(sweep_members(sweep), None)  # runs that do not say: the uploader's own
    assert summary_config(read_sweep(sweep), Redactor())["veeksha_version"] == __version__


def would_upload(stdout: str) -> dict[str, str]:
    """Dry-run lines by the folder each names ('<dir> (sweep summary)' for a summary)."""
    out = {}
    for line in lines_for(stdout, "would upload"):
        where, detail = line.removeprefix("would upload").strip().split("  ", 1)
        out[Path(where.split(" (")[0]).name + (" (summary)" if "summary)" in where else "")] = detail
    return out


def run_id_of(detail: str) -> str:
    return detail.split(" as run ", 1)[1].split()[0]


@pytest.mark.parametrize("recursive", [False, True])
def test_a_renamed_sweep_is_still_a_sweep_with_its_summary_and_its_runs(
    tmp_path: Path, home: Home, recursive: bool
) -> None:
    """`cp -r benchmark_output/sweep-<stamp> rn/nightly-jan1`: the manifest makes it a sweep, not its
    name. Its runs share the folder's group (its name now) with its summary run, which is the same
    W&B run as the unrenamed sweep's (its id comes from the manifest's sweep_id)."""
    original = build_sweep(tmp_path / "benchmark_output", count=2)
    renamed = tmp_path / "rn" / "nightly-jan1"
    shutil.copytree(original, renamed)
    args = [str(tmp_path / "rn"), "-r"] if recursive else [str(renamed)]
    result = upload([*args, "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = would_upload(result.stdout)
    assert sorted(lines) == sorted([*(m.name for m in sweep_members(renamed)), "nightly-jan1 (summary)"])
    for member in sweep_members(renamed):
        assert "group='nightly-jan1' tags=['sweep']" in lines[member.name]
    assert (
        "name='nightly-jan1-summary' group='nightly-jan1' tags=['sweep', 'summary']"
        in lines["nightly-jan1 (summary)"]
    )
    unrenamed = would_upload(upload([str(original), "--dry-run"], home, cwd=tmp_path).stdout)
    summary_id = run_id_of(unrenamed[f"{original.name} (summary)"])
    assert run_id_of(lines["nightly-jan1 (summary)"]) == summary_id


def test_a_renamed_capacity_search_keeps_its_summary_its_group_and_its_best_attempt(
    tmp_path: Path, home: Home
) -> None:
    original = build_capsearch(tmp_path / "benchmark_output", values=(2.0, 4.0, 3.0), best=2)
    renamed = tmp_path / "rn" / "search-jan1"
    shutil.copytree(original, renamed)
    result = upload([str(renamed), "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = would_upload(result.stdout)
    best = Path(read_json(renamed / CAPSEARCH_RESULTS)["best_run_dir"]).name
    members = capsearch_members(renamed)
    assert sorted(lines) == sorted([*(m.name for m in members), "search-jan1 (summary)"])
    for member in members:
        tags = "['capsearch', 'best']" if member.name == best else "['capsearch']"
        assert f"group='search-jan1' tags={tags}" in lines[member.name]
    assert "group='search-jan1' tags=['capsearch', 'summary']" in lines["search-jan1 (summary)"]
    unrenamed = would_upload(upload([str(original), "--dry-run"], home, cwd=tmp_path).stdout)
    summary_id = run_id_of(unrenamed[f"{original.name} (summary)"])
    assert run_id_of(lines["search-jan1 (summary)"]) == summary_id


def test_a_folder_holding_a_copied_manifest_and_a_run_directory_is_a_run(tmp_path: Path, home: Home) -> None:
    """run.json decides first: a run directory is never taken for a sweep, whatever else it holds."""
    sweep = build_sweep(tmp_path / "out", count=1)
    (member,) = sweep_members(sweep)
    shutil.copy(sweep / SWEEP_MANIFEST, member / SWEEP_MANIFEST)
    result = upload([str(member), "--dry-run"], home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(would_upload(result.stdout)) == [member.name]
