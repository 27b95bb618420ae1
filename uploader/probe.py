"""A short reachability and login check of the W&B host before the SDK's long retries.

The SDK spends `init_timeout` plus about ten seconds of account look-ups on an unreachable server; a
backfill of fifty directories would hang for an hour. One GraphQL `viewer` query with a few seconds'
budget tells "unreachable", "not logged in" and "fine" apart.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
from veeksha.shared.redact import url_for_message
from veeksha.uploader.remote import post_graphql

PROBE_TIMEOUT_S = 4.0
PROBE_RETRY_BUDGET_S = 15.0  # a busy server (429, 5xx) is asked again for this long; see remote.py
_VIEWER_QUERY = {"query": "query Viewer { viewer { id username entity } }"}


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str
    entity: str | None = None  # the key's default entity: where runs go when no entity is set


def netrc_api_key(base_url: str) -> str | None:
    """The key `wandb login` stored for this host, if any."""
    host = urlparse(base_url).hostname
    if not host:
        return None
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None
    return auth[2] if auth else None


def probe(base_url: str, api_key: str | None, timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    url = base_url  # requests go to it; messages show it without user-info (a key can sit there)
    base_url = url_for_message(url)
    if not api_key:
        return ProbeResult(
            False,
            f"no W&B API key for {base_url}: set WANDB_API_KEY, pass --api-key or run `wandb login`",
        )
    try:
        resp = post_graphql(url, api_key, _VIEWER_QUERY, timeout, budget_s=PROBE_RETRY_BUDGET_S)
    except httpx.TimeoutException:
        return ProbeResult(False, f"W&B at {base_url} did not answer within {timeout:g} s")
    except httpx.HTTPError as e:
        detail = _short(e).replace(url, base_url)
        return ProbeResult(False, f"W&B at {base_url} is unreachable ({type(e).__name__}: {detail})")
    if resp.status_code in (401, 403):
        return ProbeResult(False, f"W&B at {base_url} rejected the API key (HTTP {resp.status_code})")
    if resp.status_code >= 400:
        return ProbeResult(False, f"W&B at {base_url} answered HTTP {resp.status_code}")
    try:
        doc = resp.json()
    except ValueError:
        return ProbeResult(False, f"W&B at {base_url} sent a response that is not JSON")
    try:
        viewer = _viewer_of(doc)
    except ValueError:
        why = "sent an answer that is not W&B's: is it the W&B server's URL?"
        return ProbeResult(False, f"W&B at {base_url} {why}")
    if not viewer:
        return ProbeResult(False, f"W&B at {base_url} did not accept the API key (no user for it)")
    who = viewer.get("username") or viewer.get("id")
    entity = viewer.get("entity")
    default_entity = entity if isinstance(entity, str) and entity else None
    return ProbeResult(True, f"W&B at {base_url}: logged in as {who}", default_entity)


def _viewer_of(doc: Any) -> dict[str, Any] | None:
    """The `data.viewer` object of a GraphQL answer (None: the key has no user). ValueError for JSON of
    another shape (a wrong base URL, a proxy's answer): reading it as W&B's raised a traceback."""
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    data = doc.get("data")
    if data is not None and not isinstance(data, dict):
        raise ValueError("data is not an object")
    viewer = (data or {}).get("viewer")
    if viewer is not None and not isinstance(viewer, dict):
        raise ValueError("viewer is not an object")
    return viewer or None


def _short(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:160]
