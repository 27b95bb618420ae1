"""What the W&B server already holds for a run id, asked before `wandb.init` (online only).

The answer picks the init path deliberately: create a new run, rewind an existing one of ours to
step 0, or recognise an offline run that was published meanwhile. Trying to create first and
retrying after "already exists" left the SDK with a half-open run in the same process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
from veeksha.shared.redact import url_for_message

LOOKUP_TIMEOUT_S = 10.0
# A 429 or 5xx (W&B busy, a proxy between deploys) is asked again after a pause, for up to this
# long in all: one such answer failed a directory, or, on the probe, a whole backfill. The run and
# artifact questions also ask again after a refused or dropped connection or a timeout.
RETRY_BUDGET_S = 30.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Refused, reset or dropped connections and timeouts (not a bad URL or proxy setting: those stay).
_RETRY_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
_FIRST_PAUSE_S = 1.0

# The shape the SDK itself sends before a resume (`RunResumeStatus`), so any server that resumes runs
# answers it; `missingOk` gives null for an unknown id instead of an error.
_RUN_QUERY = """query RunResumeStatus($project: String, $entity: String, $name: String!) {
  model(name: $project, entityName: $entity) {
    bucket(name: $name, missingOk: true) { id name displayName historyLineCount config }
  }
}"""


_ARTIFACTS_QUERY = """query RunOutputArtifacts(
  $entity: String, $project: String!, $runName: String!, $cursor: String
) {
  project(name: $project, entityName: $entity) {
    run(name: $runName) {
      outputArtifacts(first: 100, after: $cursor) {
        edges { node { state digest artifactType { name } } }
        pageInfo { hasNextPage endCursor }
      }
    }
  }
}"""
# Pages of 100 read at most: each re-upload adds a run's table artifacts (about 17), so the run's
# own artifact may sit beyond the first page.
MAX_ARTIFACT_PAGES = 50


_FILES_QUERY = """query RunFiles(
  $project: String!, $entity: String, $name: String!, $fileNames: [String], $cursor: String
) {
  project(name: $project, entityName: $entity) {
    run(name: $name) {
      files(names: $fileNames, first: 100, after: $cursor) {
        edges { node { name sizeBytes } }
        pageInfo { hasNextPage endCursor }
      }
    }
  }
}"""
MAX_FILE_PAGES = 50


class RemoteError(Exception):
    """The server could not say whether the run exists."""


# The W&B run config key holding the digest of the directory content an upload made the run of
# (worker.Plan.digest): tells our upload of this content from an older one of the same run id.
UPLOAD_DIGEST_KEY = "veeksha_upload_digest"


@dataclass(frozen=True)
class RemoteRun:
    run_id: str
    history_lines: int
    upload_digest: str | None = None  # the config's UPLOAD_DIGEST_KEY, if the run has one


def set_deadline(at: float | None) -> None:
    """The time (time.monotonic) at which this process's directory upload is killed (pool.py), or
    None: questions asked again stop short of it, so the directory fails with their own line."""
    global _deadline
    _deadline = at


_deadline: float | None = None
# Given up this long before the deadline: the worker still has to send its outcome.
_DEADLINE_MARGIN_S = 2.0


def post_graphql(
    base_url: str,
    api_key: str,
    body: dict[str, Any],
    timeout: float,
    budget_s: float | None = None,
    retry_errors: bool = False,
) -> httpx.Response:
    """POST a GraphQL body; a 429 or 5xx answer is asked again (after its Retry-After, else 1, 2,
    4 ... s, the last pause cut so that the whole budget is used) until `budget_s` is spent or the
    deadline (set_deadline) is near, and the last answer returned. With `retry_errors`, a refused or
    dropped connection or a timeout is asked again the same way and the last one raised; without,
    httpx errors propagate at once (the probe: an unreachable server is said within seconds)."""
    pause = _FIRST_PAUSE_S
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0))) as client:
        # The budget is for asking, so it starts once the client can ask: building the client (its
        # SSL context) takes a tenth of a second or more on a busy machine, a share of a short budget.
        end = _asking_ends(budget_s)
        while True:
            if _deadline is not None:  # one question never runs past the deadline either
                left = max(0.1, _deadline - _DEADLINE_MARGIN_S - time.monotonic())
                client.timeout = httpx.Timeout(min(timeout, left), connect=min(timeout, 3.0, left))
            try:
                resp = client.post(f"{base_url.rstrip('/')}/graphql", json=body, auth=("api", api_key))
            except _RETRY_ERRORS:
                if not retry_errors or time.monotonic() >= end:
                    raise
                wait = pause
            else:
                if resp.status_code not in RETRY_STATUSES or time.monotonic() >= end:
                    return resp
                wait = _retry_after(resp, pause)
            time.sleep(max(0.0, min(wait, end - time.monotonic())))
            pause *= 2


def _asking_ends(budget_s: float | None) -> float:
    """When (time.monotonic) asking again stops: the budget from now, or short of the deadline."""
    end = time.monotonic() + (RETRY_BUDGET_S if budget_s is None else budget_s)
    return end if _deadline is None else min(end, _deadline - _DEADLINE_MARGIN_S)


def _retry_after(resp: httpx.Response, default: float) -> float:
    """Seconds the server asked us to wait (Retry-After in seconds), else `default`."""
    try:
        return max(0.0, float(resp.headers.get("retry-after", default)))
    except ValueError:  # an HTTP date: not worth parsing for a pause this short
        return default


def _graphql(base_url: str, api_key: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    shown = url_for_message(base_url)  # a proxy password in the URL stays out of the message
    try:
        resp = post_graphql(base_url, api_key, body, LOOKUP_TIMEOUT_S, retry_errors=True)
    except httpx.HTTPError as e:
        raise RemoteError(f"asking W&B at {shown} for {what} failed ({type(e).__name__})") from None
    if resp.status_code != 200:
        raise RemoteError(f"asking W&B at {shown} for {what}: HTTP {resp.status_code}")
    try:
        doc: Any = resp.json()
    except ValueError:
        raise RemoteError(f"asking W&B at {shown} for {what}: the answer is not JSON") from None
    if not isinstance(doc, dict) or (doc.get("errors") and not doc.get("data")):
        message = (doc.get("errors") or [{}])[0].get("message") if isinstance(doc, dict) else doc
        raise RemoteError(f"asking W&B at {shown} for {what}: {message}")
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
    return RemoteRun(
        run_id, int(bucket.get("historyLineCount") or 0), _config_value(bucket, UPLOAD_DIGEST_KEY)
    )


def _config_value(bucket: dict[str, Any], key: str) -> str | None:
    """One value of a run's config as the server stores it (a JSON string of {key: {"value": v}})."""
    try:
        config = json.loads(bucket.get("config") or "{}")
    except (TypeError, ValueError):
        return None
    entry = config.get(key) if isinstance(config, dict) else None
    value = entry.get("value") if isinstance(entry, dict) else None
    return value if isinstance(value, str) else None


def committed_artifact_types(
    base_url: str, api_key: str, entity: str | None, project: str, run_id: str
) -> set[str]:
    """Types of the artifacts the run logged that were committed (a pending one lacks files)."""
    return {kind for kind, _ in committed_artifacts(base_url, api_key, entity, project, run_id)}


def committed_artifacts(
    base_url: str, api_key: str, entity: str | None, project: str, run_id: str
) -> set[tuple[str, str | None]]:
    """(type, digest) of each artifact the run logged that was committed."""
    found: set[tuple[str, str | None]] = set()
    cursor = None
    for _ in range(MAX_ARTIFACT_PAGES):
        variables = {"project": project, "entity": entity, "runName": run_id, "cursor": cursor}
        data = _graphql(
            base_url,
            api_key,
            {"query": _ARTIFACTS_QUERY, "variables": variables},
            f"the artifacts of run {run_id}",
        )
        page = ((data.get("project") or {}).get("run") or {}).get("outputArtifacts") or {}
        nodes = [e.get("node") or {} for e in page.get("edges") or []]
        for node in nodes:
            kind = (node.get("artifactType") or {}).get("name")
            if node.get("state") == "COMMITTED" and isinstance(kind, str):
                found.add((kind, node.get("digest")))
        info = page.get("pageInfo") or {}
        cursor = info.get("endCursor")
        if not info.get("hasNextPage") or not cursor:
            break
    return found


def stored_run_files(
    base_url: str, api_key: str, entity: str | None, project: str, run_id: str, names: list[str]
) -> set[str]:
    """Those of `names` (paths in the run's files: `media/...`) the server lists for the run. A listed
    file counts whatever its sizeBytes: real W&B may fill the size in only later, and a check that
    waited for it failed good uploads (and rewound them on every retry)."""
    found: set[str] = set()
    cursor = None
    for _ in range(MAX_FILE_PAGES):
        variables = {"project": project, "entity": entity, "name": run_id, "cursor": cursor}
        body = {"query": _FILES_QUERY, "variables": {**variables, "fileNames": names}}
        data = _graphql(base_url, api_key, body, f"the files of run {run_id}")
        page = ((data.get("project") or {}).get("run") or {}).get("files") or {}
        for edge in page.get("edges") or []:
            node = edge.get("node") or {}
            if isinstance(node.get("name"), str):
                found.add(node["name"])
        info = page.get("pageInfo") or {}
        cursor = info.get("endCursor")
        if not info.get("hasNextPage") or not cursor:
            break
    return found
