"""A loopback fake of the W&B server that the real wandb SDK (online mode) can talk to.

It remembers what an online upload produced (runs, config, summary, history, run files, artifacts), so
tests can assert on it. Only what the SDK (0.31, Go `wandb-core`) needs is answered:

- POST /graphql: the operations listed in `FakeWandb._OPS` (anything else gets `{"data": {}}`);
- POST /files/<entity>/<project>/<run>/file_stream: history, summary, events and console lines;
- PUT /storage/<token>: uploads to the URLs handed out by CreateRunFiles / CreateArtifactFiles /
  CreateArtifactManifest (GET returns the stored bytes).

`fail(kind, scope)` makes requests answer HTTP 500 (or a 4xx the SDK does not retry) or hang until
`heal()` / `close()`; scopes: everything, artifact requests, the file stream, or the run's own files
(tables, plots, images: their PUTs). The `Viewer` query always answers, so a reachability probe passes
while the rest is broken.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

API_KEY = "f" * 40
ENTITY = "tester"
DEFAULT_PROJECT = "uncategorized"

_OP_RE = re.compile(r"\b(query|mutation)\s+(\w+)")
_ARTIFACT_OPS = frozenset(
    {
        "CreateArtifact",
        "CreateArtifactManifest",
        "CreateArtifactFiles",
        "UpdateArtifactManifest",
        "CommitArtifact",
        "UseArtifact",
        "UpdateArtifact",
        "LinkArtifact",
        "CompleteMultipartUploadArtifact",
        "FetchArtifactDigestAlgorithm",
        "XXHashDigestsEnabled",
        "ArtifactManifest",
        "ArtifactFileURLsByManifestEntries",
        "ArtifactType",
    }
)


@dataclass
class FakeArtifact:
    name: str
    type: str
    digest: str | None
    state: str = "PENDING"
    files: dict[str, bytes] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    aliases: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """Paths the manifest lists whose bytes never reached the server."""
        return [p for p in self.manifest.get("contents", {}) if p not in self.files]


@dataclass
class FakeRun:
    entity: str
    project: str
    run_id: str
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    job_type: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    history_arrivals: list[float] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    artifacts: list[FakeArtifact] = field(default_factory=list)
    state: str = "running"
    exit_code: int | None = None
    upserts: int = 0
    rewinds: int = 0
    storage_id: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    raw_config: str | None = None
    used_artifacts: list[FakeArtifact] = field(default_factory=list)


def _decode_config(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    data = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    for key, val in data.items():
        out[key] = val["value"] if isinstance(val, dict) and "value" in val else val
    return out


ARTIFACT_PAGE = 100  # output artifacts per page, as W&B's `first: 100`
FILES_PAGE = 100  # run files per page, as the uploader's `first: 100`


class FakeWandb:
    """The server. Use as a context manager or call `close()`."""

    def __init__(self, api_key: str = API_KEY, entity: str = ENTITY) -> None:
        self.api_key = api_key
        self.entity = entity
        self.runs: dict[tuple[str, str, str], FakeRun] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.bodies: list[tuple[str, str, Any]] = []  # (path, op, parsed body): for debugging
        self.created = 0
        self.artifacts: dict[str, FakeArtifact] = {}
        self._artifact_run: dict[str, FakeRun] = {}
        self._uploads: dict[str, tuple[str, Any, str]] = {}  # token -> (kind, owner, name)
        self._lock = threading.RLock()
        self._fail: tuple[str, str] | None = None
        self._fail_run: str | None = None
        self._release = threading.Event()
        self._release.set()
        self._closed = False
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-wandb", daemon=True)
        self._thread.start()

    # ---- public API ---------------------------------------------------------------------------
    def __enter__(self) -> FakeWandb:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def run(self, run_id: str, project: str | None = None) -> FakeRun:
        with self._lock:
            for (_, proj, rid), run in self.runs.items():
                if rid == run_id and (project is None or proj == project):
                    return run
        raise KeyError(run_id if project is None else f"{project}/{run_id}")

    def hide_from_first_lookup(self, run_id: str) -> None:
        """The first look-up of `run_id` finds no run; later ones (the SDK's init) find it: another
        upload created the run between our look-up and our init. Look-ups of other ids answer as
        they are."""
        real = self._op_RunResumeStatus
        seen: list[str] = []

        def created_meanwhile(v: dict[str, Any], q: str) -> dict[str, Any]:
            answer = real(v, q)
            if v["name"] == run_id:
                seen.append(run_id)
                if len(seen) == 1:
                    answer["model"]["bucket"] = None
            return answer

        self._op_RunResumeStatus = created_meanwhile  # type: ignore[method-assign]

    def fail(self, kind: str, scope: str, run_id: str | None = None) -> None:
        """From now on fail `scope` requests; with `run_id` (file_stream only), only that run's."""
        # "400" / "403": answers the SDK does not retry (it gives up on that part and finishes).
        if kind not in ("500", "400", "403", "stall") or scope not in (
            "all",
            "artifacts",
            "file_stream",
            "files",
        ):
            raise ValueError(f"unknown failure {kind!r}/{scope!r}")
        with self._lock:
            self._fail = (kind, scope)
            self._fail_run = run_id
            if kind == "stall":
                self._release.clear()

    def heal(self) -> None:
        with self._lock:
            self._fail = None
            self._release.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.heal()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)

    # ---- failure injection --------------------------------------------------------------------
    def _failure_for(self, category: str, run_id: str | None = None) -> str | None:
        """category: "viewer" | "graphql" | "artifacts" | "file_stream" | "files" | "other"."""
        with self._lock:
            if self._fail is None or category == "viewer":
                return None
            if self._fail_run is not None and run_id != self._fail_run:
                return None
            kind, scope = self._fail
            if scope == "all" or scope == category:
                return kind
            return None

    # ---- GraphQL ------------------------------------------------------------------------------
    def _find_run(self, entity: str | None, project: str | None, name: str) -> FakeRun | None:
        return self.runs.get((entity or self.entity, project or DEFAULT_PROJECT, name))

    def _storage_url(self, kind: str, owner: Any, name: str) -> str:
        token = uuid.uuid4().hex
        self._uploads[token] = (kind, owner, name)
        return f"{self.base_url}/storage/{token}"

    def _project(self, run: FakeRun) -> dict[str, Any]:
        return {
            "id": _b64(f"Project:{run.entity}/{run.project}"),
            "name": run.project,
            "entity": {"id": _b64(f"Entity:{run.entity}"), "name": run.entity},
        }

    def _bucket(self, run: FakeRun) -> dict[str, Any]:
        history_tail = [json.dumps(r) for r in run.history[-10:]]
        config = {k: {"value": v, "desc": None} for k, v in run.config.items()}
        return {
            "id": run.storage_id,
            "name": run.run_id,
            "displayName": run.name,
            "description": run.notes,
            "notes": run.notes,
            "config": json.dumps(config),
            "sweepName": None,
            "groupName": run.group,
            "jobType": run.job_type,
            "tags": list(run.tags),
            "state": run.state,
            "project": self._project(run),
            "summaryMetrics": json.dumps(run.summary),
            "historyLineCount": len(run.history),
            "logLineCount": len(run.output),
            "eventsLineCount": len(run.events),
            "historyTail": json.dumps(history_tail),
            "eventsTail": json.dumps([json.dumps(e) for e in run.events[-10:]]),
            "wandbConfig": json.dumps({"t": run.config.get("_wandb", {}).get("t")}),
            "createdAt": "2026-01-01T00:00:00",
            "updatedAt": "2026-01-01T00:00:00",
        }

    def _viewer(self, authed: bool) -> dict[str, Any]:
        if not authed:
            return {"viewer": None}
        return {
            "viewer": {
                "id": _b64(f"User:{self.entity}"),
                "entity": self.entity,
                "username": self.entity,
                "email": f"{self.entity}@example.com",
                "admin": False,
                "flags": "{}",
                "teams": {"edges": []},
                "organizations": [],
            }
        }

    def graphql(self, op: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            if "__type" in query or "__schema" in query:
                return _introspection(query)
            return {}
        with self._lock:
            return handler(variables, query)

    def _op_Viewer(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return self._viewer(True)

    def _op_ServerFeaturesQuery(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return {"serverInfo": {"features": []}}

    def _op_ServerInfo(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return {
            "serverInfo": {
                "cliVersionInfo": {},
                "latestLocalVersionInfo": None,
                "features": [],
            }
        }

    def _op_UpsertBucket(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        run = self._run_by_storage_id(v.get("id"))
        inserted = False
        if run is None:
            run, inserted = self._run_by_name_or_new(v)
        run.upserts += 1
        _apply_upsert(run, v)
        return {"upsertBucket": {"bucket": self._bucket(run), "inserted": inserted}}

    def _run_by_storage_id(self, storage_id: str | None) -> FakeRun | None:
        if not storage_id:
            return None
        return next((r for r in self.runs.values() if r.storage_id == storage_id), None)

    def _run_by_name_or_new(self, v: dict[str, Any]) -> tuple[FakeRun, bool]:
        """The run an UpsertBucket names (a random name when none), created if new; True if created."""
        entity = v.get("entity") or self.entity
        project = v.get("project") or DEFAULT_PROJECT
        name = v.get("name") or uuid.uuid4().hex[:8]
        run = self.runs.get((entity, project, name))
        if run is not None:
            return run, False
        run = FakeRun(entity=entity, project=project, run_id=name)
        run.storage_id = _b64(f"Run:{entity}/{project}/{name}")
        self.runs[(entity, project, name)] = run
        self.created += 1
        return run, True

    def _op_RunResumeStatus(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        entity = v.get("entity") or self.entity
        project = v.get("project") or DEFAULT_PROJECT
        run = self._find_run(entity, project, v["name"])
        return {
            "model": {
                "id": _b64(f"Project:{entity}/{project}"),
                "name": project,
                "entity": {"id": _b64(f"Entity:{entity}"), "name": entity},
                "bucket": None if run is None else self._bucket(run),
            }
        }

    def _op_RewindRun(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        run = self._find_run(v.get("entity"), v.get("project"), v["runName"])
        if run is None:
            raise _GraphQLError(f"run {v['runName']} not found")
        # Like the real server: history is cut AFTER the rewind point (the row at `metricValue` stays).
        # The SDK then logs from step metricValue + 1 at file_stream offset historyLineCount.
        metric, value = v["metricName"], v["metricValue"]
        cut = 0
        while cut < len(run.history) and run.history[cut].get(metric, value) <= value:
            cut += 1
        del run.history[cut:]
        del run.history_arrivals[cut:]
        run.summary = {}  # recomputed from the newly logged history
        run.rewinds += 1
        run.state = "running"
        run.exit_code = None
        return {"rewindRun": {"rewoundRun": self._bucket(run)}}

    def _op_CreateRunFiles(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        run = self._find_run(v.get("entity"), v.get("project"), v["run"])
        if run is None:
            raise _GraphQLError(f"run {v['run']} not found")
        files = [{"name": n, "uploadUrl": self._storage_url("run", run, n)} for n in v["files"]]
        return {"createRunFiles": {"runID": run.storage_id, "uploadHeaders": [], "files": files}}

    # artifacts
    def _artifact_node(self, art: FakeArtifact) -> dict[str, Any]:
        return {
            "id": art.id,
            "digest": art.digest,
            "state": art.state,
            "aliases": [{"artifactCollectionName": art.name, "alias": a} for a in art.aliases],
            "artifactSequence": {"id": _b64(f"Seq:{art.name}"), "name": art.name, "latestArtifact": None},
            "versionIndex": 0,
        }

    def _op_CreateArtifact(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        inp = v.get("input", v)
        name = inp.get("artifactCollectionName") or inp.get("artifactCollectionNames", ["?"])[0]
        art = FakeArtifact(name=name, type=inp.get("artifactTypeName", ""), digest=inp.get("digest"))
        art.id = _b64(f"Artifact:{uuid.uuid4().hex}")
        art.aliases = [a.get("alias", "") for a in inp.get("aliases") or [] if isinstance(a, dict)]
        if inp.get("metadata"):
            art.metadata = json.loads(inp["metadata"])
        self.artifacts[art.id] = art
        run = self._find_run(inp.get("entityName"), inp.get("projectName"), inp.get("runName") or "")
        if run is not None:
            run.artifacts.append(art)
            self._artifact_run[art.id] = run
        return {"createArtifact": {"artifact": self._artifact_node(art)}}

    def _manifest_payload(self, v: dict[str, Any], key: str) -> dict[str, Any]:
        inp = v.get("input", v)
        art_id = inp.get("artifactID")
        art = self.artifacts.get(art_id) if art_id else None
        if art is None:
            raise _GraphQLError(f"artifact {art_id} not found")
        url = self._storage_url("manifest", art, "wandb_manifest.json")
        file = {
            "id": _b64("File:manifest"),
            "name": "wandb_manifest.json",
            "displayName": "wandb_manifest.json",
            "uploadUrl": url,
            "uploadHeaders": [],
            "directUrl": url,
        }
        manifest = {"id": _b64(f"Manifest:{art.id}"), "file": file}
        return {key: {"artifactManifest": manifest}}

    def _op_CreateArtifactManifest(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return self._manifest_payload(v, "createArtifactManifest")

    def _op_UpdateArtifactManifest(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return self._manifest_payload(v, "updateArtifactManifest")

    def _op_CreateArtifactFiles(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        inp = v.get("input", v)
        edges = []
        for spec in inp.get("artifactFiles") or v.get("artifactFiles") or []:
            art = self.artifacts.get(spec.get("artifactID"))
            if art is None:
                raise _GraphQLError(f"artifact {spec.get('artifactID')} not found")
            url = self._storage_url("artifact", art, spec["name"])
            node = {
                "id": _b64(f"File:{uuid.uuid4().hex}"),
                "name": spec["name"],
                "displayName": spec["name"].rsplit("/", 1)[-1],
                "uploadUrl": url,
                "uploadHeaders": [],
                "uploadMultipartUrls": None,
                "storagePath": f"wandb_artifacts/{spec['name']}",
                "artifact": {"id": art.id},
            }
            edges.append({"node": node})
        return {"createArtifactFiles": {"files": {"edges": edges}}}

    def _op_CommitArtifact(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        art = self.artifacts.get(v.get("artifactID", ""))
        if art is None:
            raise _GraphQLError("artifact not found")
        art.state = "COMMITTED"
        return {"commitArtifact": {"artifact": self._artifact_node(art)}}

    def _op_UseArtifact(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        inp = v.get("input", v)
        art = self.artifacts.get(inp.get("artifactID", ""))
        run = self._find_run(inp.get("entityName"), inp.get("projectName"), inp.get("runName") or "")
        if art is not None and run is not None:
            run.used_artifacts.append(art)
        node = self._artifact_node(art) if art else {"id": inp.get("artifactID"), "digest": None}
        return {"useArtifact": {"artifact": node}}

    def _op_UpdateArtifact(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        art = self.artifacts.get(v.get("artifactID", ""))
        if art is not None and v.get("metadata"):
            art.metadata = json.loads(v["metadata"])
        return {"updateArtifact": {"artifact": self._artifact_node(art) if art else None}}

    def _op_FetchArtifactDigestAlgorithm(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return {"project": None}

    def _op_XXHashDigestsEnabled(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return {"serverInfo": {"features": []}}

    def _op_OrgFeatureFlags(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return {"organization": None}

    def _op_ClientIDMapping(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return {"clientIDMapping": None}

    def _op_FetchOrgEntityFromEntity(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return {"entity": None}

    def _op_RunState(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        run = self._find_run(v.get("entity"), v.get("project"), v.get("run", ""))
        return {"project": {"run": {"state": run.state} if run else None}}

    def _op_ArtifactType(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        name = str(v.get("name", "")).split(":", 1)[0]
        art = next((a for a in self.artifacts.values() if a.name == name), None)
        found = {"artifactType": {"name": art.type}} if art else None
        return {"project": {"artifact": found}}

    def _op_RunOutputArtifacts(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        """The artifacts a run logged, with their state (the public API's `run.logged_artifacts()`)."""
        run = self._find_run(v.get("entity") or self.entity, v.get("project"), v["runName"])
        if run is None:
            return {"project": {"run": None}}
        # Pages as the server gives them: `first` at a time after the cursor (here: an index).
        start = int(v.get("cursor") or 0)
        page = run.artifacts[start : start + ARTIFACT_PAGE]
        edges = [
            {"node": {"state": a.state, "digest": a.digest, "artifactType": {"name": a.type}}} for a in page
        ]
        more = start + len(page) < len(run.artifacts)
        info = {"hasNextPage": more, "endCursor": str(start + len(page))}
        return {"project": {"run": {"outputArtifacts": {"edges": edges, "pageInfo": info}}}}

    def _op_RunFiles(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        """The run's files of the given names (the public API's `run.files(names)`): only those whose
        bytes reached storage, with their size."""
        run = self._find_run(v.get("entity") or self.entity, v.get("project"), v["name"])
        if run is None:
            return {"project": {"run": None}}
        names = [n for n in v.get("fileNames") or run.files if n in run.files]
        start = int(v.get("cursor") or 0)
        page = names[start : start + FILES_PAGE]
        edges = [{"node": {"name": n, "sizeBytes": len(run.files[n])}} for n in page]
        info = {"hasNextPage": start + len(page) < len(names), "endCursor": str(start + len(page))}
        return {"project": {"run": {"files": {"edges": edges, "pageInfo": info}}}}

    def _op_StopRun(self, v: dict[str, Any], q: str) -> dict[str, Any]:
        return {"stopRun": {"success": True}}

    # ---- file stream / storage ----------------------------------------------------------------
    def file_stream(self, entity: str, project: str, run_id: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            run = self._find_run(entity, project, run_id)
            if run is None:
                raise KeyError(run_id)
            for fname, chunk in (body.get("files") or {}).items():
                offset = int(chunk.get("offset", 0))
                _write_stream_file(run, fname, offset, chunk.get("content") or [], now)
            _apply_exit(run, body)

    def store(self, token: str, data: bytes) -> bool:
        with self._lock:
            target = self._uploads.get(token)
            if target is None:
                return False
            kind, owner, name = target
            if kind in ("run", "artifact"):
                owner.files[name] = data
            elif kind == "manifest":
                owner.manifest = json.loads(data)
            return True

    def fetch(self, token: str) -> bytes | None:
        with self._lock:
            target = self._uploads.get(token)
            if target is None:
                return None
            kind, owner, name = target
            if kind == "manifest":
                return json.dumps(owner.manifest).encode()
            return owner.files.get(name)

    def upload_category(self, token: str) -> str:
        with self._lock:
            target = self._uploads.get(token)
        if target is None:
            return "other"
        return "files" if target[0] == "run" else "artifacts"


def _apply_upsert(run: FakeRun, v: dict[str, Any]) -> None:
    """Set what an UpsertBucket sends; a variable left out or null keeps the run's value."""
    _apply_upsert_labels(run, v)
    _apply_upsert_data(run, v)


def _apply_upsert_labels(run: FakeRun, v: dict[str, Any]) -> None:
    """Display name, group, tags, notes (or the older `description`) and job type."""
    if v.get("displayName") is not None:
        run.name = v["displayName"]
    if v.get("groupName") is not None:
        run.group = v["groupName"]
    if v.get("tags") is not None:
        run.tags = list(v["tags"])
    if v.get("notes") is not None:
        run.notes = v["notes"]
    elif v.get("description") is not None:
        run.notes = v["description"]
    if v.get("jobType") is not None:
        run.job_type = v["jobType"]


def _apply_upsert_data(run: FakeRun, v: dict[str, Any]) -> None:
    """Config (replaced), summary (merged) and state."""
    if v.get("config") is not None:
        run.raw_config = v["config"]
        run.config = _decode_config(v["config"])
    if v.get("summaryMetrics") is not None:
        run.summary.update(json.loads(v["summaryMetrics"]))
    if v.get("state") is not None:
        run.state = v["state"]


def _write_stream_file(run: FakeRun, fname: str, offset: int, lines: list[str], now: float) -> None:
    """One file's chunk of a file_stream post: its lines replace the run's from `offset` on."""
    if fname == "wandb-history.jsonl":
        _write_history(run, offset, lines, now)
    elif fname == "wandb-summary.json":
        for line in lines:
            run.summary.update(json.loads(line))
    elif fname == "wandb-events.jsonl":
        del run.events[offset:]
        run.events.extend(json.loads(line) for line in lines)
    elif fname == "output.log":
        del run.output[offset:]
        run.output.extend(lines)


def _write_history(run: FakeRun, offset: int, lines: list[str], now: float) -> None:
    """History rows at `offset` on overwrite the rows already there (a resent chunk) or are appended."""
    for pos, line in enumerate(lines, start=offset):
        row = json.loads(line)
        if pos < len(run.history):
            run.history[pos] = row
            run.history_arrivals[pos] = now
        else:
            run.history.append(row)
            run.history_arrivals.append(now)


def _apply_exit(run: FakeRun, body: dict[str, Any]) -> None:
    """A file_stream post's exit code, and the final state once it says the run is complete."""
    if body.get("exitcode") is not None:
        run.exit_code = int(body["exitcode"])
    if body.get("complete"):
        run.state = "finished" if not run.exit_code else "failed"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (a killed uploader) is expected here: no traceback on stderr."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _GraphQLError(Exception):
    pass


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _introspection(query: str) -> dict[str, Any]:
    """Capability probes (`__type(name: ...)`): say the types exist but have no optional fields."""
    out: dict[str, Any] = {}
    for m in re.finditer(r"(\w+)\s*:\s*__type\s*\(\s*name\s*:\s*\"(\w+)\"", query):
        out[m.group(1)] = {"name": m.group(2), "fields": [], "inputFields": []}
    if not out:
        for m in re.finditer(r"__type\s*\(\s*name\s*:\s*\"(\w+)\"", query):
            out["__type"] = {"name": m.group(1), "fields": [], "inputFields": []}
    return out


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeWandb
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    # helpers
    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            data = b"".join(chunks)
        else:
            data = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.headers.get("content-encoding", "").lower() == "gzip":
            data = gzip.decompress(data)
        return data

    def _send(self, status: int, payload: Any = None, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authed(self) -> bool:
        fake = self.server_fake
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user_pass = base64.b64decode(auth[6:]).decode()
            except ValueError:
                return False
            return user_pass.split(":", 1)[-1] == fake.api_key
        if auth.lower().startswith("bearer "):
            return auth[7:] == fake.api_key
        return self.headers.get("x-wandb-api-key") == fake.api_key

    def _maybe_fail(self, category: str, run_id: str | None = None) -> bool:
        """True when the request was answered (or dropped) as a failure."""
        fake = self.server_fake
        kind = fake._failure_for(category, run_id)
        if kind is None:
            return False
        if kind in ("500", "400", "403"):
            self._send(int(kind), {"errors": [{"message": "fake failure"}]})
            return True
        fake._release.wait()
        if fake._closed:
            self.close_connection = True
            return True
        return False

    # verbs
    def do_POST(self) -> None:
        fake = self.server_fake
        data = self._body()
        path = self.path.split("?", 1)[0]
        if path.endswith("/graphql"):
            self._graphql(path, data)
            return
        m = re.fullmatch(r"/files/([^/]+)/([^/]+)/([^/]+)/file_stream", path)
        with fake._lock:
            fake.requests.append(("POST", path, ""))
        if m is None:
            self._send(404, {"error": "not found"})
            return
        if not self._authed():
            self._send(401, {"error": "unauthorized"})
            return
        if self._maybe_fail("file_stream", m.group(3)):
            return
        body = json.loads(data or b"{}")
        with fake._lock:
            fake.bodies.append((path, "", body))
        try:
            fake.file_stream(m.group(1), m.group(2), m.group(3), body)
        except KeyError:
            self._send(404, {"error": "run not found"})
            return
        self._send(200, {"exitcode": None, "limits": {}})

    def _graphql(self, path: str, data: bytes) -> None:
        fake = self.server_fake
        try:
            body = json.loads(data or b"{}")
        except ValueError:
            body = {}
        query = body.get("query") or ""
        op = body.get("operationName") or ""
        if not op:
            m = _OP_RE.search(query)
            op = m.group(2) if m else ""
        variables = body.get("variables") or {}
        with fake._lock:
            fake.requests.append(("POST", path, op))
            fake.bodies.append((path, op, body))
        authed = self._authed()
        if op == "Viewer" or re.search(r"\{\s*viewer\b", query):
            self._send(200, {"data": fake._viewer(authed)})
            return
        if not authed:
            self._send(401, {"errors": [{"message": "unauthorized"}]})
            return
        if self._maybe_fail("artifacts" if op in _ARTIFACT_OPS else "graphql"):
            return
        try:
            result = fake.graphql(op, query, variables)
        except _GraphQLError as e:
            self._send(200, {"data": None, "errors": [{"message": str(e)}]})
            return
        self._send(200, {"data": result})

    def do_PUT(self) -> None:
        fake = self.server_fake
        data = self._body()
        path = self.path.split("?", 1)[0]
        with fake._lock:
            fake.requests.append(("PUT", path, ""))
        m = re.fullmatch(r"/storage/(\w+)", path)
        if m is None:
            self._send(404, {"error": "not found"})
            return
        if self._maybe_fail(fake.upload_category(m.group(1))):
            return
        if not fake.store(m.group(1), data):
            self._send(404, {"error": "unknown upload"})
            return
        self.send_response(200)
        self.send_header("content-length", "0")
        self.send_header("etag", '"fake"')
        self.end_headers()

    def do_GET(self) -> None:
        fake = self.server_fake
        path = self.path.split("?", 1)[0]
        with fake._lock:
            fake.requests.append(("GET", path, ""))
        m = re.fullmatch(r"/storage/(\w+)", path)
        if self._maybe_fail(fake.upload_category(m.group(1)) if m else "other"):
            return
        content = fake.fetch(m.group(1)) if m else None
        if content is None:
            self._send(404, {"error": "not found"})
            return
        self._send(200, raw=content)
