"""A server key after a plural flag (`--api-keys`, LMDeploy's and FastChat's) or under any flag when it
is the run's own client key reaches no file, console line or sweep label."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from veeksha.runner.server_launcher import start_server
from veeksha.shared.config import CommandServerConfig
from veeksha.shared.errors import VeekshaError
from veeksha.shared.paths import SERVER_LOG

from tests.runner.helpers import VEEKSHA_RUN, all_text_under, only_run_dir, run_cli
from tests.runner.test_secrets import free_port

KEYS = ("sk-CANARY-plural-0001", "sk-CANARY-plural-0002")
CLIENT_KEY = "sk-CANARY-client-0003"

# A server that prints its command line (as servers log their arguments) and answers every
# completion with an error that quotes it.
ARGV_ECHO_SERVER = textwrap.dedent(
    """
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    print("ARGV", sys.argv, flush=True)

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.reply(200, {"data": [{"id": "m"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.reply(400, {"error": {"message": f"started as {sys.argv}"}})

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


def test_server_keys_after_api_keys_reach_no_file_or_console_line(tmp_path: Path) -> None:
    (tmp_path / "echo_server.py").write_text(ARGV_ECHO_SERVER)
    port = free_port()
    command = f"[{sys.executable}, echo_server.py, '{port}', --api-keys, {KEYS[0]}, {KEYS[1]}]"

    proc = run_cli(
        [
            *("--output_dir", "o", "--client.model", "m", "--server.type", "command"),
            *("--server.ready_url", f"http://127.0.0.1:{port}/health", "--server.command", command),
            *("--runtime.max_sessions", "1"),
        ],
        cwd=tmp_path,
    )

    paths = only_run_dir(tmp_path / "o")
    assert "ARGV" in (paths.root / SERVER_LOG).read_text()  # the server ran and printed its command line
    assert "--api-keys" in paths.config_yml.read_text()  # the flag itself stays readable
    text = all_text_under(tmp_path / "o") + proc.stdout + proc.stderr
    assert "CANARY" not in text


def test_the_client_key_given_to_the_server_under_any_flag_is_hidden(tmp_path: Path) -> None:
    """config.yml and run.json's argv: the key is the run's secret wherever else it is written."""
    (tmp_path / "echo_server.py").write_text(ARGV_ECHO_SERVER)
    port = free_port()
    (tmp_path / "c.veeksha.yml").write_text(
        f"output_dir: o\nclient: {{model: m}}\nruntime: {{max_sessions: 1}}\n"
        f"server: {{type: command, ready_url: 'http://127.0.0.1:{port}/health',"
        f" command: [{sys.executable}, echo_server.py, '{port}', --served-key-list, {CLIENT_KEY}]}}\n"
    )

    proc = run_cli(
        [
            *("--config", "c.veeksha.yml", "--client.api_key", CLIENT_KEY),
            *("--server.command.4", CLIENT_KEY, "--wandb.notes", f"key {CLIENT_KEY}"),
        ],
        cwd=tmp_path,
    )

    paths = only_run_dir(tmp_path / "o")
    assert "--served-key-list" in paths.config_yml.read_text()
    assert "--wandb.notes" in paths.run_json.read_text()  # the command line is kept
    text = all_text_under(tmp_path / "o") + proc.stdout + proc.stderr
    assert "CANARY" not in text


def test_a_sweep_over_api_keys_prints_its_runs_without_them(tmp_path: Path) -> None:
    (tmp_path / "s.veeksha.yml").write_text(
        "output_dir: o\nclient: {model: m}\n"
        "server: {type: command, ready_url: 'http://127.0.0.1:18094/health',"
        f" command: [{sys.executable}, s.py, '18094', --api-keys, !expand [{KEYS[0]}, {KEYS[1]}]]}}\n"
    )

    proc = run_cli(["--config", "s.veeksha.yml", "--dry-run"], cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert "server.command.4" in proc.stdout and "CANARY" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("flags", "extra_secrets"),
    [
        (["--api-keys", KEYS[0], KEYS[1]], ()),
        (["--served-key-list", CLIENT_KEY], (CLIENT_KEY,)),  # the client's key: a known secret
    ],
)
def test_a_server_that_never_gets_ready_is_named_without_its_keys(
    tmp_path: Path, flags: list[str], extra_secrets: tuple[str, ...]
) -> None:
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", "import time; time.sleep(30)", *flags],
        ready_url=f"http://127.0.0.1:{free_port()}/health",
        ready_timeout=1,
    )

    with pytest.raises(VeekshaError) as caught:
        start_server(cfg, log_path=tmp_path / "server.log", extra_secrets=extra_secrets)

    message = str(caught.value)
    assert "did not manage to answer 2xx" in message and flags[0] in message
    assert "CANARY" not in message


def test_a_key_one_run_of_a_sweep_holds_is_hidden_in_every_run(tmp_path: Path) -> None:
    """A sweep over keys (a good one against a wrong one), the good key also given where no rule
    looks (a sampling parameter): each run knew only its own key as a secret, so the run with the
    wrong key wrote the good one in its config.yml, its label and the sweep's files."""
    good, wrong = "sk-CANARY-good-1234567", "sk-wrong-7654321"
    (tmp_path / "s.veeksha.yml").write_text(
        "output_dir: o\nserver: {type: simulated}\nruntime: {max_sessions: 1}\n"
        f"client: {{api_key: !expand [{good}, {wrong}], additional_sampling_params: {{user: {good}}}}}\n"
    )

    dry = run_cli(["--config", "s.veeksha.yml", "--dry-run"], cwd=tmp_path)
    proc = run_cli(["--config", "s.veeksha.yml"], cwd=tmp_path)

    assert dry.returncode == 0 and proc.returncode == 0, proc.stdout + proc.stderr
    (sweep,) = (tmp_path / "o").iterdir()
    configs = sorted(sweep.glob("*/config.yml"))
    assert len(configs) == 2 and all("user: <redacted>" in c.read_text() for c in configs)
    text = all_text_under(tmp_path / "o") + dry.stdout + dry.stderr + proc.stdout + proc.stderr
    assert "CANARY" not in text and "7654321" not in text


def test_a_key_of_another_run_of_the_sweep_is_hidden_in_a_launched_servers_output(tmp_path: Path) -> None:
    """The same sweep over keys, the good key also on the launched server's command line under a flag
    no rule knows: the run holding the wrong key printed it in the server command line and server.log."""
    good, wrong = "sk-CANARY-good-7654321", "sk-wrong-1234567"
    port = free_port()
    sim = f"{VEEKSHA_RUN} simulate-server --port {port}"
    (tmp_path / "s.veeksha.yml").write_text(
        "output_dir: o\nruntime: {max_sessions: 1}\n"
        f"client: {{api_key: !expand [{good}, {wrong}]}}\n"
        f"server: {{type: command, ready_url: 'http://127.0.0.1:{port}/health',"
        f" command: [sh, -c, 'echo \"upstream $0\"; exec {sim}', {good}]}}\n"
    )

    proc = run_cli(["--config", "s.veeksha.yml"], cwd=tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sweep,) = (tmp_path / "o").iterdir()
    logs = [log.read_text() for log in sorted(sweep.glob("*/server.log"))]
    assert len(logs) == 2 and all("upstream <redacted>" in log for log in logs), logs
    assert "CANARY" not in all_text_under(tmp_path / "o") + proc.stdout + proc.stderr
