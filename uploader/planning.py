"""From PATH arguments to upload tasks: each directory's settings, the reachability check of each
W&B server, the secrets to keep out of W&B. Shared by plain uploads, --sync and --follow."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from veeksha.shared.errors import VeekshaError
from veeksha.shared.paths import CONFIG_YML
from veeksha.shared.redact import environment_secrets
from veeksha.uploader import groups
from veeksha.uploader.discovery import Target
from veeksha.uploader.marker import Marker, read_marker, read_pending
from veeksha.uploader.probe import netrc_api_key, probe
from veeksha.uploader.reader import read_config
from veeksha.uploader.redaction import MIN_SCRUBBED_CHARS
from veeksha.uploader.settings import Layer, config_layer, marker_layer, resolve
from veeksha.uploader.worker import FAILED, SKIPPED, Outcome, Task


def _config_of(target: Target) -> dict[str, Any]:
    if target.kind == groups.RUN:
        return read_config(target.path / CONFIG_YML)
    return groups.container_config(target.path)


def unfinished_sync(root: Path) -> Marker | None:
    """The offline upload whose publishing (`--sync`) failed or was interrupted: its marker is still
    offline and the pending file names its run (not written by an offline upload: --sync is online).
    A plain upload finishes publishing it, with its settings."""
    marker = read_marker(root)
    if marker is None or marker.mode != "offline":
        return None
    pending = read_pending(root)
    if pending is None or pending.run_id != marker.run_id or pending.offline_only:
        return None
    return marker


def plan_task(
    target: Target, env: Layer, flags: Layer, *, force: bool, dry_run: bool, publish: bool = False
) -> Task:
    """The settings of one target. `publish` (--sync): the offline upload's own settings, then online."""
    if target.kind != groups.RUN and not groups.container_members(target.path):
        # A sweep or search stopped before its first run (or not yet at it): a summary run of nothing.
        # Its settings would come from a run's config, so without one an upload failed for want of an
        # online API key, or wrote an empty W&B run.
        try:  # a file of it that cannot be read is still this target's failure, naming the file
            groups.read_container(target.path, target.kind)
        except (VeekshaError, OSError) as e:
            return Task(target, None, force, dry_run, error=str(e))
        why = "none of its runs has a directory yet: nothing to upload"
        return Task(target, None, force, dry_run, skip=why)
    try:
        config = _config_of(target)
        cfg_layer = config_layer(groups.wandb_section(config), str(target.path / CONFIG_YML))
    except VeekshaError as e:
        return Task(target, None, force, dry_run, error=str(e))
    layers = [cfg_layer, env]
    marker = read_marker(target.path) if publish else unfinished_sync(target.path)
    if marker is not None:
        layers.append(marker_layer(marker.settings, marker.project, marker.entity))
    settings = resolve(*layers, flags)
    if publish:
        settings = settings.with_mode("online")
    if settings.mode == "online" and not settings.api_key:
        settings = replace(settings, api_key=netrc_api_key(settings.base_url))
    return Task(target, settings, force, dry_run)


def check_online(tasks: list[Task], fallback: bool, say: Callable[[str], None]) -> list[Task]:
    """Probe each online destination once; unreachable → fail fast or fall back to offline (`say`
    gets one line per unreachable destination)."""
    verdicts: dict[tuple[str, str | None], str | None] = {}
    entities: dict[tuple[str, str | None], str | None] = {}
    out: list[Task] = []
    for task in tasks:
        s = task.settings
        if s is None or s.mode != "online":
            out.append(task)
            continue
        key = (s.base_url, s.api_key)
        if key not in verdicts:
            result = probe(s.base_url, s.api_key)
            verdicts[key] = None if result.ok else result.message
            entities[key] = result.entity
            if not result.ok:
                action = "writing offline runs instead" if fallback else "nothing uploaded online"
                hint = "" if fallback else " (use --mode offline or --fallback-offline)"
                say(f"{result.message}; {action}{hint}")
        problem = verdicts[key]
        if problem is None:
            out.append(replace(task, default_entity=entities.get(key), fallback_offline=fallback))
        elif fallback:
            out.append(replace(task, settings=s.with_mode("offline"), unreachable_server=s.base_url))
        else:
            out.append(replace(task, error=f"not uploaded: {problem}"))
    return out


def secrets_of(*layers: Layer, tasks: list[Task]) -> tuple[str, ...]:
    """The literal secrets to keep out of W&B: the API keys, and the environment's secrets as the
    runner scrubs them (HF_TOKEN, a proxy's password): an older runner left a token a server echoed
    in its traces or health text."""
    keys = {layer.api_key for layer in layers} | {t.settings.api_key for t in tasks if t.settings}
    # Only values long enough to scrub byte for byte (a short one, "1" or "false", blanks ordinary text).
    keys |= {v for v in _environment_secrets(os.environ) if len(v) >= MIN_SCRUBBED_CHARS}
    return tuple(sorted(k for k in keys if k))


# A URL's user part with no password is taken for a secret only when it looks like a token: 20 or more
# characters and no '.' (`https://ghp_...@github.com`, `https://sk-...@host`). A shorter one, or one with
# a dot, is a login name (`https://alice.smith@nexus/simple`): scrubbing it blanked /home/alice.smith/...
# in every uploaded config.yml.
TOKEN_USER_CHARS = 20


def _environment_secrets(env: Mapping[str, str]) -> list[str]:
    """shared.redact.environment_secrets as the uploader scrubs them, byte for byte from whole files:
    never an all-digit value (X_PASSWORD=20240101 was replaced inside numbers of JSON and CSV files),
    nor a URL's user name that does not look like a token. The runner's own scrubbing is unchanged."""
    users: set[str] = set()
    for value in env.values():
        if not value[:8].lower().startswith(("http://", "https://")):
            continue
        try:
            parts = urlsplit(value)
        except ValueError:
            continue
        if parts.password is None and parts.username and not _token_like(unquote(parts.username)):
            users |= {parts.username, unquote(parts.username)}
    return [v for v in environment_secrets(env) if not v.isdigit() and v not in users]


def _token_like(user: str) -> bool:
    return len(user) >= TOKEN_USER_CHARS and "." not in user


def offline_uploads(targets: list[Target], report: Callable[[Outcome], None]) -> list[Target]:
    """--sync: the targets holding an offline upload; the others are reported as skipped."""
    out = []
    for target in targets:
        marker = read_marker(target.path)
        if marker is not None and marker.mode == "offline":
            out.append(target)
            continue
        why = "already published online" if marker else "no offline upload here (no wandb_run.json)"
        report(Outcome(str(target.path), target.kind, SKIPPED, why))
    return out


def unreadable_reporter(report: Callable[[Outcome], None]) -> Callable[[Path, OSError], None]:
    """What a --recursive walk does with a folder it cannot list: a failure naming it."""

    def unreadable(path: Path, e: OSError) -> None:
        why = f"cannot be searched ({e.strerror or e}); runs in it, if any, were not uploaded"
        report(Outcome(str(path), "directory", FAILED, why))

    return unreadable
