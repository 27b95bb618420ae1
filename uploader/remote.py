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


class RemoteError(Exception):
    """The server could not say whether the run exists."""


@dataclass(frozen=True)
class RemoteRun:
    run_id: str
    history_lines: int


def lookup_run(
    base_url: str, api_key: str, entity: str | None, project: str, run_id: str
) -> RemoteRun | None:
    """The run with this id in entity/project, or None when the server has none."""
    body = {"query": _RUN_QUERY, "variables": {"project": project, "entity": entity, "name": run_id}}
    try:
        with httpx.Client(timeout=httpx.Timeout(LOOKUP_TIMEOUT_S, connect=3.0)) as client:
            resp = client.post(f"{base_url.rstrip('/')}/graphql", json=body, auth=("api", api_key))
    except httpx.HTTPError as e:
        raise RemoteError(f"asking W&B at {base_url} for run {run_id} failed ({type(e).__name__})") from None
    if resp.status_code != 200:
        raise RemoteError(f"asking W&B at {base_url} for run {run_id}: HTTP {resp.status_code}")
    try:
        doc: Any = resp.json()
    except ValueError:
        raise RemoteError(f"asking W&B at {base_url} for run {run_id}: the answer is not JSON") from None
    if doc.get("errors") and not doc.get("data"):
        raise RemoteError(f"asking W&B at {base_url} for run {run_id}: {doc['errors'][0].get('message')}")
    bucket = ((doc.get("data") or {}).get("model") or {}).get("bucket")
    if not bucket:
        return None
    return RemoteRun(run_id, int(bucket.get("historyLineCount") or 0))
