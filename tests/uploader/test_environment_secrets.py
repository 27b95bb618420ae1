"""A secret from the uploader's environment never goes out in an artifact file.

The runner scrubs the environment's secrets (HF_TOKEN, a proxy password, ...) from what it writes; an
older runner did not, so a token a server echoed may sit in an older directory's trace or health text.
The uploader scrubs them as the runner does (shared.redact.environment_secrets), not only the W&B keys
and the secrets it finds in config.yml.
"""

from __future__ import annotations

from pathlib import Path

from veeksha.shared.paths import HEALTH_CHECK_TXT, TRACES_DIR

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import Home, lines_for, upload
from tests.uploader.wandb_records import offline_run_dirs, read_offline_run

HF_TOKEN = "hf_ENVtokenSecret_5e4d3c2b1a"
PROXY_PASSWORD = "PROXYpass-9f8e7d6c"


def test_a_secret_of_the_environment_in_an_older_directory_is_scrubbed_from_its_artifact(
    tmp_path: Path, home: Home
) -> None:
    root = build_run(tmp_path, RunSpec(seed=45, seconds=2))
    with (root / HEALTH_CHECK_TXT).open("a") as f:
        f.write(f"server said: 401 for token {HF_TOKEN}\n")
    trace = next((root / TRACES_DIR).glob("*.jsonl"))
    with trace.open("a") as f:
        f.write(f'{{"echo": "via http://u:{PROXY_PASSWORD}@proxy.internal:3128"}}\n')
    env = {"HF_TOKEN": HF_TOKEN, "HTTPS_PROXY": f"http://u:{PROXY_PASSWORD}@proxy.internal:3128"}

    result = upload([str(root), "--mode", "offline"], home, cwd=tmp_path, env=env)

    assert lines_for(result.stdout, "uploaded"), result.stdout + result.stderr
    (sync_dir,) = offline_run_dirs(root)
    artifact = read_offline_run(sync_dir).artifact("veeksha-run")
    shipped = [root / local for local in artifact.entries.values()]
    recorded = [p for p in (root / "wandb").rglob("*") if p.is_file()]
    for path in shipped + recorded:
        data = path.read_bytes()
        assert HF_TOKEN.encode() not in data and PROXY_PASSWORD.encode() not in data, path
    assert artifact.entries[HEALTH_CHECK_TXT] == f"wandb/redacted/{HEALTH_CHECK_TXT}"


def test_a_user_name_in_a_url_and_an_all_digit_value_are_not_scrubbed(monkeypatch) -> None:
    """`https://alice.smith@nexus/simple` names a user, no secret: scrubbing it blanked
    /home/alice.smith/... in every config.yml. An all-digit value (X_PASSWORD=20240101) was replaced
    inside the numbers of JSON and CSV files. A user part that looks like a token is still scrubbed."""
    from veeksha.uploader.planning import secrets_of

    token = "glpatABCDEFGHIJKLMNOPQRSTUVWX"
    for name in list(os_environ()):
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_INDEX_URL", "https://alice.smith@nexus/simple")
    monkeypatch.setenv("X_PASSWORD", "20240101")
    monkeypatch.setenv("GIT_URL", f"https://{token}@git.example/x.git")
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    found = secrets_of(tasks=[])
    assert "alice.smith" not in found and "20240101" not in found
    assert token in found and HF_TOKEN in found


def os_environ() -> dict[str, str]:
    import os

    return dict(os.environ)
