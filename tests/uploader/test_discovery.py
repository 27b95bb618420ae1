"""Which directories an invocation covers, locks, redaction, and usage errors (exit 2, one line)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from veeksha.shared.errors import UsageError
from veeksha.shared.redact import REDACTED
from veeksha.uploader.discovery import discover
from veeksha.uploader.groups import CAPSEARCH_SUMMARY, RUN, SWEEP_SUMMARY
from veeksha.uploader.locks import DirLock, LockBusy
from veeksha.uploader.redaction import Redactor

from tests.uploader.builders import RunSpec, build_capsearch, build_run, build_sweep
from tests.uploader.conftest import VEEKSHA_UPLOAD


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tree")
    build_run(out / "a", RunSpec(seed=1))
    build_run(out / "b" / "deeper", RunSpec(seed=2, status="running"))
    build_sweep(out / "c", count=2)
    build_capsearch(out / "d", values=(1.0, 2.0), best=0)
    hidden = build_run(out / ".trash", RunSpec(seed=3))
    build_run(out / "a" / "wandb", RunSpec(seed=4))  # never look inside wandb/ folders
    assert hidden.exists()
    return out


def test_recursive_walk_finds_runs_and_containers(tree: Path) -> None:
    targets = discover([str(tree)], recursive=True)
    kinds = [t.kind for t in targets]
    assert kinds.count(RUN) == 1 + 1 + 2 + 2
    assert kinds.count(SWEEP_SUMMARY) == 1 and kinds.count(CAPSEARCH_SUMMARY) == 1
    assert not [t for t in targets if ".trash" in t.path.parts or "wandb" in t.path.parts]
    assert discover([str(tree), str(tree / "a")], recursive=True) == targets  # deduplicated


def test_a_container_path_stands_for_its_runs_and_its_summary(tree: Path) -> None:
    sweep = next((tree / "c").iterdir())
    targets = discover([str(sweep)], recursive=False)
    assert [t.kind for t in targets].count(RUN) == 2 and targets[0].kind == SWEEP_SUMMARY


def test_a_plain_folder_needs_recursive(tree: Path) -> None:
    with pytest.raises(UsageError, match="use --recursive"):
        discover([str(tree)], recursive=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/dir"], "/no/such/dir: no such directory"),
        (["--jobs", "0", "."], "Invalid value for '--jobs'"),
        (["--nope", "."], "No such option '--nope'"),
        ([], "give at least one PATH"),
        (
            ["~nouser-x9/runs"],
            "PATH: '~nouser-x9/runs' starts with ~, but nouser-x9 has no home directory on this machine; "
            "give the full path",
        ),
        (
            ["--follow", "~nouser-x9/run"],
            "--follow: '~nouser-x9/run' starts with ~, but nouser-x9 has no home",
        ),
        (["--sync", "~nouser-x9"], "PATH: '~nouser-x9' starts with ~, but nouser-x9 has no home directory"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = subprocess.run([VEEKSHA_UPLOAD, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("veeksha-upload: ") and message in line
    assert result.stdout == ""


def test_a_directory_lock_admits_one_holder(tmp_path: Path) -> None:
    with DirLock(tmp_path):
        with pytest.raises(LockBusy):
            DirLock(tmp_path).acquire()
    with DirLock(tmp_path):  # released on exit
        pass


def test_redactor_hides_header_values_and_remembers_secrets() -> None:
    r = Redactor()
    tree = {
        "headers": {"Authorization": "Bearer abc12345", "X-Custom": "Basic dXNlcjpwYXNz"},
        "extra": {"hf_token": "hf_secret_value", "max_tokens": 12},
        "note": "the token hf_secret_value leaked here",
    }
    r.tree(tree)
    clean = r.tree(tree)
    assert clean["headers"] == {"Authorization": REDACTED, "X-Custom": REDACTED}
    assert clean["extra"] == {"hf_token": REDACTED, "max_tokens": 12}
    assert clean["note"] == f"the token {REDACTED} leaked here"
    assert r.contains_secret(b"..abc12345..") and r.scrub_bytes(b"x abc12345 y") == f"x {REDACTED} y".encode()


def test_redactor_hides_plain_server_env_values_but_scrubs_only_secret_looking_ones_from_files() -> None:
    r = Redactor()
    clean = r.tree(
        {"server": {"env": {"TOKENIZERS_PARALLELISM": "false", "NCCL_DEBUG": "INFO", "CRED": "c" * 12}}}
    )
    assert clean["server"]["env"] == {k: REDACTED for k in ("TOKENIZERS_PARALLELISM", "NCCL_DEBUG", "CRED")}
    # Files are scrubbed byte for byte: short words must survive, or JSON breaks.
    assert r.scrub_bytes(b'{"passed": false, "level": "INFO"}') == b'{"passed": false, "level": "INFO"}'
    assert r.scrub_bytes(b"x " + b"c" * 12) == f"x {REDACTED}".encode()
    r.tree({"server": {"env": {"X": REDACTED}}})  # an already redacted config.yml
    assert REDACTED not in r.known


@pytest.mark.skipif(
    shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop root's file access override"
)
def test_a_folder_the_walk_cannot_read_fails_by_name(tmp_path: Path) -> None:
    # `--recursive` ignored a folder it could not list: its runs were never uploaded, and nothing
    # said so. Run without root's override of file permissions (we are root in CI), so the
    # chmod 000 folder is really unreadable.
    build_run(tmp_path / "tree" / "mine", RunSpec(seed=1))
    locked = tmp_path / "tree" / "someone-elses"
    build_run(locked / "run", RunSpec(seed=2))
    locked.chmod(0)
    try:
        drop = [
            "setpriv",
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
        ]
        done = subprocess.run(
            [*drop, VEEKSHA_UPLOAD, "--recursive", "--dry-run", str(tmp_path / "tree")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        locked.chmod(0o755)
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "someone-elses" in failed[0] and "cannot be searched" in failed[0]
    assert "would upload" in done.stdout


def test_text_that_only_starts_like_a_credential_is_not_one() -> None:
    # "Basic arithmetic ..." in a system prompt was hidden and its words scrubbed from every file.
    r = Redactor()
    prompt = "Basic arithmetic questions for a calculator"
    tree = {
        "generator": {"system_prompt": prompt},
        "notes": "Token throughput",  # a scheme word and one plain word: prose
        "note": "Bearer sk-abcdef123456",
        "d": 'Digest username="u"',
    }
    clean = r.tree(tree)
    assert clean == {**tree, "note": REDACTED, "d": REDACTED}
    assert (
        r.scrub_bytes(b"Answer these basic arithmetic questions")
        == b"Answer these basic arithmetic questions"
    )
