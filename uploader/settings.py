"""Where W&B settings come from, lowest first: config.yml `wandb:` < WANDB_* environment < flags.

The environment is read once, in the parent process, and handed to every worker explicitly: the SDK
reads its environment once per process, so a backfill loop must never rely on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from veeksha.shared.config import WandbConfig
from veeksha.shared.errors import ContractError
from veeksha.shared.schema import build
from veeksha.shared.wandb_env import env_base_url, env_mode
from veeksha.uploader.redaction import Redactor

DEFAULT_PROJECT = "veeksha"
DEFAULT_BASE_URL = "https://api.wandb.ai"


@dataclass(frozen=True)
class Layer:
    """One source of settings; None means "not set here"."""

    project: str | None = None
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] | None = None
    notes: str | None = None
    run_name: str | None = None
    mode: str | None = None
    log_artifacts: bool | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class UploadSettings:
    """Everything one upload needs, resolved; passed explicitly to wandb.init."""

    project: str
    entity: str | None
    group: str | None
    tags: tuple[str, ...]
    notes: str | None
    run_name: str | None
    mode: str
    log_artifacts: bool
    base_url: str
    api_key: str | None = field(default=None, repr=False)

    def with_mode(self, mode: str) -> UploadSettings:
        return replace(self, mode=mode)

    def identity(self) -> dict[str, Any]:
        """The settings that shape what W&B shows (part of the upload digest; no secret). The server
        is not: an offline run and the same run published later have one digest (the marker keeps
        the server apart, see marker.is_current)."""
        return {
            "project": self.project,
            "entity": self.entity,
            "group": self.group,
            "tags": list(self.tags),
            "notes": self.notes,
            "run_name": self.run_name,
            "log_artifacts": self.log_artifacts,
        }


def marker_layer(saved: Mapping[str, Any] | None, project: str, entity: str | None) -> Layer:
    """The settings an offline upload was made with (kept in its marker), as a layer below the flags:
    `--sync` on another host publishes the same run id, name, group and tags. Markers written before
    the settings were kept give only their project and entity."""
    saved = saved or {"project": project, "entity": entity}

    def text(key: str) -> str | None:
        value = saved.get(key)
        return value if isinstance(value, str) and value else None

    tags = saved.get("tags")
    artifacts = saved.get("log_artifacts")
    return Layer(
        project=text("project"),
        entity=text("entity"),
        group=text("group"),
        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else None,
        notes=text("notes"),
        run_name=text("run_name"),
        log_artifacts=artifacts if isinstance(artifacts, bool) else None,
    )


def _split_tags(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


def env_layer(environ: Mapping[str, str] | None = None) -> Layer:
    """The standard WANDB_* variables (https://docs.wandb.ai/guides/track/environment-variables);
    UsageError for a mode or server URL that no upload could use."""
    env = os.environ if environ is None else environ
    return Layer(
        project=env.get("WANDB_PROJECT") or None,
        entity=env.get("WANDB_ENTITY") or None,
        group=env.get("WANDB_RUN_GROUP") or None,
        tags=_split_tags(env.get("WANDB_TAGS")),
        notes=env.get("WANDB_NOTES") or None,
        run_name=env.get("WANDB_NAME") or None,
        mode=env_mode(env),
        base_url=env_base_url(env),
        api_key=env.get("WANDB_API_KEY") or None,
    )


def config_layer(raw_wandb: Any, source: str) -> Layer:
    """The `wandb:` section of a config.yml (validated; errors name the file)."""
    try:
        cfg: WandbConfig = build(WandbConfig, raw_wandb or {}, "wandb")
    except Exception as e:  # ConfigError from the shared validator
        raise ContractError(f"{source}: {e}") from None
    return Layer(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=tuple(cfg.tags) if cfg.tags else None,
        notes=cfg.notes,
        run_name=cfg.run_name,
        mode=cfg.mode,
        log_artifacts=cfg.log_artifacts,
    )


def resolve(*layers: Layer) -> UploadSettings:
    """Merge layers, lowest precedence first; a later layer's set value wins."""

    def pick(name: str) -> Any:
        value = None
        for layer in layers:
            v = getattr(layer, name)
            if v is not None:
                value = v
        return value

    mode = pick("mode") or "online"
    log_artifacts = pick("log_artifacts")
    shown = shown_text(pick("api_key"))
    return UploadSettings(
        project=pick("project") or DEFAULT_PROJECT,
        entity=pick("entity"),
        group=shown(pick("group")),
        tags=tuple(dict.fromkeys(str(shown(t)) for t in pick("tags") or ())),
        notes=shown(pick("notes")),
        run_name=shown(pick("run_name")),
        mode=mode,
        log_artifacts=True if log_artifacts is None else bool(log_artifacts),
        base_url=(pick("base_url") or DEFAULT_BASE_URL).rstrip("/"),
        api_key=pick("api_key"),
    )


def shown_text(api_key: str | None) -> Callable[[str | None], str | None]:
    """What W&B may show of a notes, tag, group or run-name text: the value rule the uploader applies
    to the config (`Bearer sk-...` becomes REDACTED), and the API key scrubbed. Applied as settings
    are resolved, so the run, the dry-run report and the marker all see the same shown values."""
    redactor = Redactor()
    redactor.add_secret(api_key)

    def shown(text: str | None) -> str | None:
        return redactor.value(text) if text else text

    return shown
