"""What an upload prints: one line per directory and the count (docs/uploader.md, "Backfill from cron").

The W&B SDK prints its own lines ("wandb: [wandb.login()] Using explicit session credentials ...") when
it is given credentials; in a cron log, or on `veeksha-run`'s console beside a `--follow` upload, they
are noise. Real processes, the real SDK, the loopback fake W&B server.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.uploader.builders import RunSpec, build_run
from tests.uploader.conftest import VEEKSHA_UPLOAD, Home, online_env, read_marker_json
from tests.uploader.fake_wandb import FakeWandb
from tests.uploader.test_follow import LiveRun, created_run_id, following


def _files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]


def test_a_backfill_log_has_one_line_per_directory_and_the_count(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    tree = tmp_path / "cron"
    dirs = [build_run(tree, RunSpec(seed=60 + i, seconds=2)) for i in range(3)]
    # The cron line of the docs: both streams into one log, two workers for three directories (so
    # one worker uploads two of them, once with the credentials it was given before).
    result = subprocess.run(
        [VEEKSHA_UPLOAD, "--recursive", str(tree), "--jobs", "2", "--fallback-offline"],
        cwd=tmp_path,
        env=home.env(online_env(fake_wandb)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=240,
    )
    log = result.stdout
    assert result.returncode == 0, log
    lines = log.splitlines()
    view = re.escape(f"View run at {fake_wandb.base_url}/")
    expected = [rf"uploaded +cron/{re.escape(d.name)} +{view}\S+" for d in dirs]
    assert len(lines) == 4, log
    for pattern in expected:
        assert sum(bool(re.fullmatch(pattern, line)) for line in lines[:-1]) == 1, (pattern, log)
    assert lines[-1] == "veeksha-upload: 3 uploaded, 0 skipped, 0 failed (3 directories)", log
    assert all(read_marker_json(d)["mode"] == "online" for d in dirs)
    # The key given once per worker reaches no file (the directories' SDK logs included) and no line.
    key = fake_wandb.api_key.encode()
    assert fake_wandb.api_key not in log
    assert _files_holding(tree, key) == [] and _files_holding(home.root, key) == []


def test_a_followed_upload_prints_only_its_own_lines(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    live = LiveRun(tmp_path)
    try:
        with following(live.root, home, online_env(fake_wandb), "--mode", "online") as follower:
            created_run_id(fake_wandb)  # followed live, not found finished
            live.finish()
            out, err = follower.communicate(timeout=120)
    finally:
        live.stop()
    assert follower.returncode == 0, out + err
    assert err == "", err
    name = re.escape(live.root.name)
    following_line = rf"veeksha-upload: following {re.escape(str(live.root))}; View run at \S+"
    count = re.escape("veeksha-upload: 1 uploaded, 0 skipped, 0 failed (1 directory)")
    assert re.fullmatch(rf"{following_line}\nuploaded +{name} +View run at \S+\n{count}\n", out), out


def test_a_password_in_the_servers_url_reaches_no_line(
    tmp_path: Path, home: Home, fake_wandb: FakeWandb
) -> None:
    run_dir = build_run(tmp_path, RunSpec(seed=64, seconds=2))
    url = fake_wandb.base_url.replace("http://", "http://user:SEKRETPW123@")  # a proxy's credentials
    result = subprocess.run(
        [VEEKSHA_UPLOAD, str(run_dir)],
        cwd=tmp_path,
        env=home.env({"WANDB_BASE_URL": url, "WANDB_API_KEY": fake_wandb.api_key}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout
    uploaded, count = result.stdout.splitlines()
    assert uploaded.startswith("uploaded") and "View run at http://<redacted>@127.0.0.1:" in uploaded
    assert count == "veeksha-upload: 1 uploaded, 0 skipped, 0 failed (1 directory)"
