"""The fake W&B server (tests/uploader/fake_wandb.py) against the REAL wandb SDK in online mode.

Each SDK session runs in its own process with a private HOME, pointed at the fake through
WANDB_BASE_URL / WANDB_API_KEY; the test then asserts on what the fake remembers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.uploader.conftest import make_home, online_env
from tests.uploader.fake_wandb import FakeWandb

SETTINGS = (
    'wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, '
    "x_disable_machine_info=True, disable_git=True, disable_code=True, init_timeout=30)"
)

# Every script gets `wandb`, `settings`, `out` (write one JSON result) and `work` (a scratch dir).
PRELUDE = f"""
import json, os, sys
import wandb
settings = {SETTINGS}
work = sys.argv[1]
def out(obj):
    print("RESULT " + json.dumps(obj), flush=True)
"""

FULL_RUN = """
run = wandb.init(project="proj", id="full1", name="nice name", group="grp", tags=["a", "b"],
                 notes="some notes", job_type="bench", config={"lr": 0.1, "nested": {"x": 1}},
                 settings=settings)
run.define_metric("elapsed_s")
run.define_metric("timeseries/*", step_metric="elapsed_s")
for i in range(5):
    run.log({"elapsed_s": i, "timeseries/x": i * 2})
run.log({"tbl": wandb.Table(columns=["a", "b"], data=[[1, 2], [3, 4]])})
run.summary["best"] = 42
run.summary["label"] = "ok"
art = wandb.Artifact("metrics", type="results")
for name, content in (("a", '{"a": 1}'), ("b", '{"b": 2}')):
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        f.write(content)
    art.add_file(path, name=f"metrics/{name}.json", policy="immutable", skip_cache=True)
run.log_artifact(art)
run.finish()
out("ok")
"""

SIMPLE_RUN = """
run = wandb.init(project="proj", id=sys.argv[2], tags=["first"], settings=settings)
for i in range(5):
    run.log({"elapsed_s": i, "v": i})
run.finish()
out("ok")
"""

RESUME_NEVER = """
try:
    run = wandb.init(project="proj", id=sys.argv[2], resume="never", settings=settings)
except Exception as e:
    out({"error": type(e).__name__ + ": " + str(e)})
else:
    run.finish()
    out({"error": None})
"""

RESUME_MUST = """
run = wandb.init(project="proj", id=sys.argv[2], resume="must", settings=settings)
for i in range(2):
    run.log({"elapsed_s": 10 + i, "v": 100 + i})
run.finish()
out("ok")
"""

REWIND = """
run = wandb.init(project="proj", resume_from=sys.argv[2] + "?_step=0", tags=["second"], settings=settings)
for i in range(5):
    run.log({"elapsed_s": i, "v": 100 + i})
run.finish()
out("ok")
"""


@pytest.fixture
def fake() -> Iterator[FakeWandb]:
    with FakeWandb() as server:
        yield server


def sdk(fake: FakeWandb, tmp_path: Path, body: str, *args: str, timeout: float = 90) -> Any:
    """Run `body` with the real SDK in a fresh process; returns the object it passed to out()."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    for d in (home, work):
        d.mkdir(exist_ok=True)
    env = make_home(home).env({**online_env(fake), "WANDB_ERROR_REPORTING": "false"})
    script = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(work), *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    results = [line[len("RESULT ") :] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and results, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(results[-1])


def test_full_run_is_remembered(fake: FakeWandb, tmp_path: Path) -> None:
    assert sdk(fake, tmp_path, FULL_RUN) == "ok"
    run = fake.run("full1")
    assert run is fake.run("full1", project="proj") and (run.entity, run.project) == ("tester", "proj")
    assert fake.created == 1
    assert run.name == "nice name" and run.group == "grp" and run.notes == "some notes"
    assert run.tags == ["a", "b"] and run.job_type == "bench"
    assert run.config["lr"] == 0.1 and run.config["nested"] == {"x": 1}
    rows = [r for r in run.history if "elapsed_s" in r]
    assert [(r["elapsed_s"], r["timeseries/x"]) for r in rows] == [(i, i * 2) for i in range(5)]
    assert [r["_step"] for r in run.history] == list(range(6))
    assert len(run.history_arrivals) == len(run.history)
    table_row = run.history[5]["tbl"]
    assert table_row["_type"] == "table-file"
    table = json.loads(run.files[table_row["path"]])
    assert table["columns"] == ["a", "b"] and table["data"] == [[1, 2], [3, 4]]
    assert run.summary["best"] == 42 and run.summary["label"] == "ok" and run.summary["elapsed_s"] == 4
    assert "wandb-summary.json" in run.files
    assert run.state == "finished" and run.exit_code == 0
    metrics = [a for a in run.artifacts if a.name == "metrics"]
    assert len(metrics) == 1
    art = metrics[0]
    assert art.type == "results" and art.state == "COMMITTED" and art.digest
    assert art.files == {"metrics/a.json": b'{"a": 1}', "metrics/b.json": b'{"b": 2}'}
    assert set(art.manifest["contents"]) == {"metrics/a.json", "metrics/b.json"} and not art.missing()
    assert all(a.state == "COMMITTED" and not a.missing() for a in run.artifacts)  # the table's too
    assert run.upserts >= 1 and run.rewinds == 0
    ops = {op for _, _, op in fake.requests}
    assert {"Viewer", "UpsertBucket", "CreateArtifact", "CommitArtifact", "CreateRunFiles"} <= ops


def test_resume_never_on_existing_run_fails(fake: FakeWandb, tmp_path: Path) -> None:
    assert sdk(fake, tmp_path, SIMPLE_RUN, "dup1") == "ok"
    result = sdk(fake, tmp_path, RESUME_NEVER, "dup1")
    assert result["error"] and "already exists" in result["error"]
    assert fake.created == 1
    assert len(fake.run("dup1").history) == 5
    # resume="must" appends after the existing history; on an unknown id it fails
    assert sdk(fake, tmp_path, RESUME_MUST, "dup1") == "ok"
    assert [r["v"] for r in fake.run("dup1").history] == [0, 1, 2, 3, 4, 100, 101]
    assert [r["_step"] for r in fake.run("dup1").history] == list(range(7))
    assert "does not exist" in sdk(fake, tmp_path, RESUME_NEVER.replace('"never"', '"must"'), "nope")["error"]
    # a fresh id is fine with resume="never"
    assert sdk(fake, tmp_path, RESUME_NEVER, "fresh1") == {"error": None}
    assert fake.created == 2


def test_resume_from_step_zero_rewinds(fake: FakeWandb, tmp_path: Path) -> None:
    assert sdk(fake, tmp_path, SIMPLE_RUN, "rw1") == "ok"
    first = time.time()
    assert sdk(fake, tmp_path, REWIND, "rw1") == "ok"
    run = fake.run("rw1")
    assert fake.created == 1 and run.rewinds == 1
    # As with the real server (and the SDK's contract: it resumes logging at step N + 1 at file_stream
    # offset historyLineCount), rewinding to step N keeps the row AT step N: the old step-0 row stays,
    # the five new rows become steps 1..5. 6 rows, not 10, and not 5.
    assert [(r["_step"], r["v"]) for r in run.history] == [(0, 0)] + [(i + 1, 100 + i) for i in range(5)]
    assert run.history_arrivals[0] < first <= min(run.history_arrivals[1:])
    assert run.tags == ["second"]
    assert run.state == "finished" and run.summary["v"] == 104


def test_failures(fake: FakeWandb) -> None:
    auth = ("api", fake.api_key)
    viewer = {"query": "query Viewer { viewer { id username entity } }"}
    graphql = f"{fake.base_url}/graphql"
    stream = f"{fake.base_url}/files/tester/proj/x/file_stream"

    r = httpx.post(graphql, json=viewer, auth=auth, timeout=5)
    assert r.status_code == 200 and r.json()["data"]["viewer"]["entity"] == "tester"
    r = httpx.post(graphql, json=viewer, auth=("api", "0" * 40), timeout=5)
    assert r.json()["data"]["viewer"] is None
    r = httpx.post(
        graphql,
        json={"query": "query ServerFeaturesQuery { serverInfo { features { name } } }"},
        auth=("api", "0" * 40),
        timeout=5,
    )
    assert r.status_code == 401

    fake.fail("500", "all")
    r = httpx.post(graphql, json=viewer, auth=auth, timeout=5)
    assert r.status_code == 200 and r.json()["data"]["viewer"]["username"] == "tester"
    upsert = {
        "query": "mutation UpsertBucket($name: String) { upsertBucket(input: {name: $name}) { inserted } }"
    }
    assert httpx.post(graphql, json=upsert, auth=auth, timeout=5).status_code == 500
    assert httpx.post(stream, json={"files": {}}, auth=auth, timeout=5).status_code == 500
    assert fake.created == 0
    fake.heal()
    r = httpx.post(graphql, json={**upsert, "variables": {"name": "x"}}, auth=auth, timeout=5)
    assert r.status_code == 200 and r.json()["data"]["upsertBucket"]["inserted"] is True
    assert fake.created == 1 and fake.run("x").project == "uncategorized"

    fake.fail("stall", "file_stream")
    with pytest.raises(httpx.TimeoutException):
        httpx.post(stream, json={"files": {}}, auth=auth, timeout=1)
    r = httpx.post(graphql, json=viewer, auth=auth, timeout=5)
    assert r.status_code == 200 and r.json()["data"]["viewer"]["entity"] == "tester"

    # a stalled request still pending while close() runs
    def stalled() -> None:
        try:
            httpx.post(stream, json={"files": {}}, auth=auth, timeout=10)
        except httpx.HTTPError:
            pass

    pending = threading.Thread(target=stalled, daemon=True)
    pending.start()
    time.sleep(0.2)
    start = time.monotonic()
    fake.close()
    assert time.monotonic() - start < 2
    ops = [op for _, _, op in fake.requests]
    assert ops.count("Viewer") == 4 and "ServerFeaturesQuery" in ops
