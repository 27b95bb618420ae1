"""A stop that comes while a command is still importing ends it as a later one does: one line, exit
130. Before, a Ctrl-C there printed a KeyboardInterrupt traceback from inside some import, and a
SIGTERM ended the command with no word (exit -15). Real processes; the stop is sent by the process
to itself as the command's main module starts importing, the moment a fast Ctrl-C would land."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

CHILD = """
import builtins, os, signal, sys
from {entry} import main

real_import = builtins.__import__

def import_then_stopped(name, *args, **kwargs):
    if name == "{heavy}":
        builtins.__import__ = real_import
        os.kill(os.getpid(), {sig})
    return real_import(name, *args, **kwargs)

builtins.__import__ = import_then_stopped
sys.argv = ["{prog}", "--help"]
main()
"""

COMMANDS = [
    ("veeksha-run", "veeksha.runner.__main__", "veeksha.runner.cli"),
    ("veeksha-upload", "veeksha.uploader.__main__", "veeksha.uploader.cli"),
]


@pytest.mark.parametrize(("prog", "entry", "heavy"), COMMANDS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_while_the_command_imports_ends_it_with_one_line_and_exit_130(
    prog: str, entry: str, heavy: str, sig: int
) -> None:
    child = CHILD.format(entry=entry, heavy=heavy, sig=int(sig), prog=prog)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == f"{prog}: interrupted"
    assert "usage" not in done.stdout.lower()  # stopped, not gone on to its --help


def test_a_hangup_ignored_by_whoever_started_the_command_stays_ignored() -> None:
    child = (
        "import signal\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "from veeksha.shared.starting import starting\n"
        "with starting('veeksha-run'):\n"
        "    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("prog", "entry", "heavy"), COMMANDS)
def test_what_a_command_imports_before_its_guard_is_light(prog: str, entry: str, heavy: str) -> None:
    """Before the guard is in place a Ctrl-C prints Python's traceback. veeksha.shared imported
    importlib.metadata there for its version (~30 ms: email, zipfile, ...), and a fuzzer's Ctrl-C 40 ms
    after a start landed in it. The version is now looked up when first asked for."""
    code = f"import sys; import {entry}; print('importlib.metadata' in sys.modules, '{heavy}' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == ["False", "False"]
