"""What the W&B server already holds for a run id, asked before `wandb.init` (online only).

The answer picks the init path deliberately: create a new run, rewind an existing one of ours to
step 0, or recognise an offline run that was published meanwhile. Trying to create first and
retrying after "already exists" left the SDK with a half-open run in the same process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

LOOKUP_TIMEOUT_S = 10.0

# The shape the SDK itself sends before a resume (`RunResumeStatus`), so any server that resumes runs
# answers it; `missingOk` gives null for an unknown id instead of an error.
_RUN_QUERY = """query RunResumeStatus($project: String, $entity: String, $name: String!) {
  model(name: $project, entityName: $entity) {
    bucket(name: $name, missingOk: true) { id name displayName historyLineCount }
  }
}"""


_ARTIFACTS_QUERY = """query RunOutputArtifacts($entity: String, $project: String!, $runName: String!) {
  project(name: $project, entityName: $entity) {
    run(name: $runName) { outputArtifacts(first: 100) { edges { node { state artifactType { name } } } } }
  }
}"""


class RemoteError(Exception):
    """The server could not say whether the run exists."""


@dataclass(frozen=True)
class RemoteRun:
    run_id: str
    history_lines: int


def _graphql(base_url: str, api_key: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    try:
        with httpx.Client(timeout=httpx.Timeout(LOOKUP_TIMEOUT_S, connect=3.0)) as client:
            resp = client.post(f"{base_url.rstrip('/')}/graphql", json=body, auth=("api", api_key))
    except httpx.HTTPError as e:
        raise RemoteError(f"asking W&B at {base_url} for {what} failed ({type(e).__name__})") from None
    if resp.status_code != 200:
        raise RemoteError(f"asking W&B at {base_url} for {what}: HTTP {resp.status_code}")
    try:
        doc: Any = resp.json()
    except ValueError:
        raise RemoteError(f"asking W&B at {base_url} for {what}: the answer is not JSON") from None
    if not isinstance(doc, dict) or (doc.get("errors") and not doc.get("data")):
        message = (doc.get("errors") or [{}])[0].get("message") if isinstance(doc, dict) else doc
        raise RemoteError(f"asking W&B at {base_url} for {what}: {message}")
    return doc.get("data") or {}


def lookup_run(
    base_url: str, api_key: str, entity: str | None, project: str, run_id: str
) -> RemoteRun | None:
    """The run with this id in entity/project, or None when the server has none."""
    body = {"query": _RUN_QUERY, "variables": {"project": project, "entity": entity, "name": run_id}}
    data = _graphql(base_url, api_key, body, f"run {run_id}")
    bucket = (data.get("model") or {}).get("bucket")
    if not bucket:
        return None
    return RemoteRun(run_id, int(bucket.get("historyLineCount") or 0))


def committed_artifact_types(
    base_url: str, api_key: str, entity: str | None, project: str, run_id: str
) -> set[str]:
    """Types of the artifacts the run logged that were committed (a pending one lacks files)."""
    body = {"query": _ARTIFACTS_QUERY, "variables": {"project": project, "entity": entity, "runName": run_id}}
    data = _graphql(base_url, api_key, body, f"the artifacts of run {run_id}")
    run = (data.get("project") or {}).get("run") or {}
    edges = (run.get("outputArtifacts") or {}).get("edges") or []
    nodes = [e.get("node") or {} for e in edges]
    names = ((n.get("artifactType") or {}).get("name") for n in nodes if n.get("state") == "COMMITTED")
    return {name for name in names if isinstance(name, str)}
