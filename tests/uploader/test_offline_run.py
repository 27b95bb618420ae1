"""One run directory uploaded offline, read back from the `.wandb` record stream (wandb.md table).

The directory carries planted secrets (an Authorization header, a token inside
additional_sampling_params, a Basic credential under an innocent header name, a server.env value
under a plain name, a server command's --api-key value) and the API key is
given both by flag and by environment: none of them may appear in anything the SDK recorded.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import yaml
from veeksha.shared.paths import ARTIFACT_ALLOW_LIST, DISTRIBUTION_METRICS, RunPaths
from veeksha.uploader.remote import UPLOAD_DIGEST_KEY
from veeksha.uploader.wandb_session import wandb_run_id

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, upload
from tests.uploader.wandb_records import OfflineRun, offline_run_dirs, read_offline_run

SECRETS = {
    "authorization": "sk-AUTHsecret-0001",
    "sampling_token": "hf_TOKENsecret_0002",
    "header_value": "dXNlcjpCQVNJQ3NlY3JldDAwMDM=",
    "server_env": "ENVvalue-under-a-plain-name-0006",  # every server.env value is a secret
    "server_flag": "sk-server-flag-secret-0007",  # the value after --api-key in server.command
}
FLAG_KEY = "FLAGkey-secret-0004-abcdefabcdefabcdef"
ENV_KEY = "ENVkey-secret-0005-abcdefabcdefabcdef"
ALL_SECRETS = [*SECRETS.values(), FLAG_KEY, ENV_KEY]


@dataclass
class Uploaded:
    root: Path
    stdout: str
    stderr: str
    run: OfflineRun
    marker: dict


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory: pytest.TempPathFactory, home: Home) -> Uploaded:
    out = tmp_path_factory.mktemp("out")
    wandb_cfg = {"project": "cfg-project", "group": "cfg-group", "tags": ["cfg"], "notes": "cfg notes"}
    root = build_run(out, RunSpec(seed=1, wandb={**wandb_cfg, "mode": "online"}, secrets=SECRETS))
    env = {"WANDB_API_KEY": ENV_KEY, "WANDB_PROJECT": "env-project", "WANDB_RUN_GROUP": "env-group"}
    args = [str(root), "--mode", "offline", "--api-key", FLAG_KEY, "--tag", "flag-tag", "--tag", "nightly"]
    result = upload([*args, "--notes", "flag notes"], home, cwd=out, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (sync_dir,) = offline_run_dirs(root)
    marker = orjson.loads((root / "wandb_run.json").read_bytes())
    return Uploaded(root, result.stdout, result.stderr, read_offline_run(sync_dir), marker)


def expected_files(root: Path) -> list[str]:
    found = {p.relative_to(root).as_posix() for pat in ARTIFACT_ALLOW_LIST for p in root.glob(pat)}
    return sorted(f for f in found if (root / f).is_file() and not f.startswith("wandb/"))


def table_json(up: Uploaded, key: str) -> dict:
    return json.loads((up.run.sync_dir / "files" / up.run.summary[key]["path"]).read_text())


def test_settings_follow_config_then_env_then_flags(uploaded: Uploaded) -> None:
    run = uploaded.run.run
    assert run.project == "env-project"  # env beats config
    assert run.run_group == "env-group"  # env beats config
    assert list(run.tags) == ["flag-tag", "nightly"]  # flags beat env and config
    assert run.notes == "flag notes"
    assert run.display_name == uploaded.root.name  # no run_name anywhere: the directory name


def test_run_id_is_derived_from_run_json_and_project(uploaded: Uploaded) -> None:
    veeksha_id = orjson.loads((uploaded.root / "run.json").read_bytes())["run_id"]
    expected = wandb_run_id("run", veeksha_id, "env-project", None)
    assert uploaded.run.run.run_id == expected == uploaded.marker["run_id"]


def test_config_is_the_redacted_config_plus_version_and_kind(uploaded: Uploaded) -> None:
    tree = yaml.safe_load((uploaded.root / "config.yml").read_text())
    client = tree["client"]
    client["headers"]["Authorization"] = "<redacted>"
    client["headers"]["X-Forwarded-Auth"] = "<redacted>"
    client["additional_sampling_params"]["extra_body"]["hf_token"] = "<redacted>"
    tree["server"]["command"][4] = "<redacted>"  # after --api-key
    tree["server"]["env"]["MY_SERVICE_CRED"] = "<redacted>"  # "EMPTY" stays empty
    assert client["headers"]["X-Trace"] == "keep-me" and tree["server"]["command"][5:] == ["--port", "8000"]
    config = uploaded.run.user_config()
    assert len(config.pop(UPLOAD_DIGEST_KEY)) >= 16  # the content it was made of (remote.py)
    assert config == {**tree, "veeksha_version": "0.1.0", "run_kind": "run"}


def test_summary_equals_the_json_files(uploaded: Uploaded) -> None:
    paths = RunPaths(uploaded.root)
    summary = uploaded.run.summary
    for name in (paths.summary_stats, paths.throughput_metrics):
        data = orjson.loads(name.read_bytes())
        assert {k: summary[k] for k in data} == data
    slo = orjson.loads(paths.slo_results.read_bytes())
    assert summary["slo/all_slos_met"] == slo["all_slos_met"]
    for r in slo["results"]:
        assert summary[f"slo/{r['name']}/observed"] == r["observed_value"]
        assert summary[f"slo/{r['name']}/threshold"] == r["threshold"]
        assert summary[f"slo/{r['name']}/met"] == r["met"]
    health = orjson.loads(paths.health_checks_json.read_bytes())
    assert summary["health/all_passed"] is health["all_passed"] is False
    states = {c["name"]: c["result"] for c in health["checks"]}
    assert set(states.values()) == {"PASSED", "FAILED", "SKIPPED"}
    for name, state in states.items():
        assert summary[f"health/{name}/result"] == state
        if state == "SKIPPED":  # a check that did not run neither passed nor failed
            assert f"health/{name}/passed" not in summary
        else:
            assert summary[f"health/{name}/passed"] is (state == "PASSED")
    assert summary["run_status"] == "completed"


def test_history_replays_timeseries_on_an_elapsed_s_axis(uploaded: Uploaded) -> None:
    with RunPaths(uploaded.root).timeseries_csv.open() as f:
        expected = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    rows = [
        {k.removeprefix("timeseries/"): v for k, v in row.items() if not k.startswith("_")}
        for row in uploaded.run.history
        if "elapsed_s" in row
    ]
    assert rows == expected
    assert any(not r.get("ttfc_p50") for r in expected)  # empty cells stay empty, never 0
    metrics = {m.glob_name or m.name: m for m in uploaded.run.metrics}
    assert metrics["timeseries/*"].step_metric == "elapsed_s"


def test_slo_table_has_one_row_per_slo(uploaded: Uploaded) -> None:
    table = table_json(uploaded, "slo_results")
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    results = orjson.loads(RunPaths(uploaded.root).slo_results.read_bytes())["results"]
    assert rows == [{c: r[c] for c in table["columns"]} for r in results]


def test_summary_stats_table_lists_each_distribution_metric(uploaded: Uploaded) -> None:
    table = table_json(uploaded, "summary_stats")
    stats = orjson.loads(RunPaths(uploaded.root).summary_stats.read_bytes())
    assert [row[0] for row in table["data"]] == list(DISTRIBUTION_METRICS)
    first = dict(zip(table["columns"], table["data"][0], strict=True))
    assert first["p99"] == pytest.approx(stats["ttfc_p99"])


def test_quantile_tables_come_with_native_line_plots(uploaded: Uploaded) -> None:
    tables = uploaded.run.media_keys("table-file")
    visualize = uploaded.run.config["_wandb"]["visualize"]
    for metric in DISTRIBUTION_METRICS:
        assert f"quantiles/{metric}" in tables
        assert table_json(uploaded, f"quantiles/{metric}")["columns"] == ["cdf", "value"]
        assert len(table_json(uploaded, f"quantiles/{metric}")["data"]) == 101
        assert visualize[f"cdf/{metric}"]["panel_config"]["panelDefId"] == "wandb/line/v0"


def test_every_png_becomes_an_image(uploaded: Uploaded) -> None:
    pngs = sorted(RunPaths(uploaded.root).metrics.glob("*.png"))
    assert len(uploaded.run.media_keys("image-file")) == len(pngs) == len(DISTRIBUTION_METRICS)
    assert len([f for f in uploaded.run.files if f.startswith("media/images/")]) == len(pngs)


def test_artifact_holds_exactly_the_allow_listed_files(uploaded: Uploaded) -> None:
    artifact = uploaded.run.artifact("veeksha-run")
    assert sorted(artifact.entries) == expected_files(uploaded.root)
    assert "traces/dispatch_trace.jsonl" in artifact.entries
    assert not [p for p in artifact.entries if p.startswith("wandb/")]


def test_no_secret_reaches_anything_the_sdk_recorded(uploaded: Uploaded) -> None:
    root = uploaded.root
    recorded = [p for p in (root / "wandb").rglob("*") if p.is_file()]
    artifact = uploaded.run.artifact("veeksha-run")
    recorded += [root / local for local in artifact.entries.values()]  # what `wandb sync` would upload
    recorded.append(root / "wandb_run.json")
    for path in recorded:
        data = path.read_bytes()
        for secret in ALL_SECRETS:
            assert secret.encode() not in data, f"{secret} found in {path}"
    for secret in ALL_SECRETS:
        assert secret not in uploaded.stdout + uploaded.stderr
    # config.yml itself (planted) still has them: the artifact carries a redacted copy instead.
    assert SECRETS["authorization"] in (root / "config.yml").read_text()
    assert artifact.entries["config.yml"] == "wandb/redacted/config.yml"


def test_everything_stays_inside_the_run_directory(uploaded: Uploaded, home: Home) -> None:
    assert not (home.root / ".local" / "share" / "wandb").exists()
    assert not list(home.root.rglob("staging"))
    run = uploaded.run
    for artifact in run.artifacts:
        for local in artifact.entries.values():
            assert not Path(local).is_absolute(), local
            assert (uploaded.root / local).is_file(), local


def test_marker_records_the_upload(uploaded: Uploaded) -> None:
    m = uploaded.marker
    assert m["mode"] == "offline" and m["project"] == "env-project" and m["group"] == "env-group"
    assert m["digest"].startswith("sha256:") and m["uploaded_at"].endswith("Z")
    assert m["sync_dir"] == str(uploaded.run.sync_dir.relative_to(uploaded.root))
    assert m["sync_command"] == f"cd {uploaded.root} && wandb sync wandb/"
    assert m["sync_command"] in uploaded.stdout


def test_moved_copy_has_every_file_its_record_stream_refers_to(uploaded: Uploaded, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / uploaded.root.name
    shutil.copytree(uploaded.root, copy, symlinks=True)
    hidden = uploaded.root.with_name(uploaded.root.name + ".away")
    uploaded.root.rename(hidden)  # the original is gone while we look
    try:
        (sync_dir,) = offline_run_dirs(copy)
        run = read_offline_run(sync_dir)
        for artifact in run.artifacts:
            for local in artifact.entries.values():
                assert (copy / local).is_file(), local
        for f in run.files:
            assert (sync_dir / "files" / f).is_file(), f
    finally:
        hidden.rename(uploaded.root)


def test_second_upload_skips_and_force_replaces_the_offline_run(uploaded: Uploaded, home: Home) -> None:
    root = uploaded.root
    env = {"WANDB_PROJECT": "env-project", "WANDB_RUN_GROUP": "env-group"}
    args = [str(root), "--mode", "offline", "--tag", "flag-tag", "--tag", "nightly", "--notes", "flag notes"]
    again = upload(args, home, cwd=root.parent, env=env)
    assert again.returncode == 0, again.stderr
    assert lines_for(again.stdout, "skipped") and "already uploaded" in again.stdout
    assert len(offline_run_dirs(root)) == 1

    forced = upload([*args, "--force"], home, cwd=root.parent, env=env)
    assert forced.returncode == 0, forced.stderr
    assert len(lines_for(forced.stdout, "uploaded")) == 1
    (sync_dir,) = offline_run_dirs(root)  # replaced, not duplicated
    assert read_offline_run(sync_dir).run.run_id == uploaded.run.run.run_id
