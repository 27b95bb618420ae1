"""The W&B environment as both sides read it: WANDB_MODE, WANDB_DISABLED and WANDB_BASE_URL.

The uploader takes its mode and server from them (uploader/settings.py). The runner, when
`wandb.enabled`, checks them before its server starts (its upload at the end would refuse them, after
the whole benchmark) and starts a live follower when the mode is online. The wandb SDK reads both
variables itself at every `init`, whatever flags say: a value it cannot use fails every upload.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from veeksha.shared.errors import UsageError
from veeksha.shared.redact import url_for_message

# WANDB_MODE values an upload acts on, as what they mean: the SDK's old spellings included. Its
# "shared" (several processes writing one run) is not one: every upload writes its run alone.
ENV_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}
DISABLED_VALUES = ("true", "1", "yes")  # WANDB_DISABLED values that switch W&B off


def not_an_http_url(url: str) -> bool:
    """`url` cannot be a W&B server: not http(s), no host, or not a URL at all."""
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port raises ValueError for a port that is no number
    except ValueError:
        return True
    return parts.scheme not in ("http", "https") or not host


def env_mode(env: Mapping[str, str]) -> str | None:
    """The mode the environment sets (WANDB_DISABLED beats WANDB_MODE), None when it sets none.
    UsageError for a WANDB_MODE no upload can use, even when WANDB_DISABLED is set: the SDK reads it."""
    mode = env.get("WANDB_MODE") or None
    if mode is not None and mode not in ENV_MODES:
        known = "set online, offline or disabled, or unset it"
        raise UsageError(f"WANDB_MODE {mode!r} is not a mode veeksha-upload knows: {known}")
    if env.get("WANDB_DISABLED", "").lower() in DISABLED_VALUES:
        return "disabled"
    return ENV_MODES[mode] if mode is not None else None


def env_base_url(env: Mapping[str, str]) -> str | None:
    """WANDB_BASE_URL, None when unset; UsageError when it is no http(s) URL (shown without its
    user-info or query: a key may sit there)."""
    url = env.get("WANDB_BASE_URL") or None
    if url is not None and not_an_http_url(url):
        shown = url_for_message(url)
        raise UsageError(f"WANDB_BASE_URL {shown!r} is not an http(s) URL of a W&B server: fix or unset it")
    return url


def check_env(env: Mapping[str, str]) -> None:
    """UsageError for the first W&B variable no upload could use (what the uploader refuses at start)."""
    env_mode(env)
    env_base_url(env)
