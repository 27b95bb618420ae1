"""A server's secrets (values after key-like flags in server.command, every server.env value) reach no
file, console line or record, even when the server prints or echoes them."""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path

import pytest
from veeksha.runner.server_launcher import start_server
from veeksha.shared.config import CommandServerConfig
from veeksha.shared.errors import ConfigError, VeekshaError

from tests.runner.helpers import all_text_under, only_run_dir, read_jsonl, run_cli

CMD_SECRET = "sk-cmd-secret-1234"
ENV_SECRET = "hf-env-secret-5678"

# A server that answers /health and /v1/models, and fails every completion with an error that
# echoes its own token and environment, as careless servers do.
ECHO_SERVER = textwrap.dedent(
    """
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    port, token = int(sys.argv[sys.argv.index("--port") + 1]), sys.argv[sys.argv.index("--api-key") + 1]
    print("starting with", token, os.environ["HF_TOKEN"], flush=True)

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.reply(200, {"data": [{"id": "echo"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.reply(400, {"error": {"message": f"bad key {token}, env {os.environ['HF_TOKEN']}"}})

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_echo_config(tmp_path: Path, sessions: int, env: str = "") -> None:
    """c.veeksha.yml: ECHO_SERVER as a command server holding CMD_SECRET on its command line, plus
    `env` (a YAML line of the server section, e.g. `env: {...}`)."""
    (tmp_path / "echo_server.py").write_text(ECHO_SERVER)
    port = free_port()
    server = textwrap.indent(
        f"type: command\n"
        f"command: [{sys.executable}, echo_server.py, --port, '{port}', --api-key, {CMD_SECRET}]\n"
        f"ready_url: http://127.0.0.1:{port}/health\n" + (f"{env}\n" if env else ""),
        "  ",
    )
    text = f"output_dir: out\nserver:\n{server}runtime: {{max_sessions: {sessions}}}\n"
    (tmp_path / "c.veeksha.yml").write_text(text)


def test_a_server_echoing_its_secrets_leaves_them_in_no_file_and_no_console_line(tmp_path: Path) -> None:
    write_echo_config(tmp_path, sessions=3, env=f"env: {{HF_TOKEN: {ENV_SECRET}}}")

    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)

    paths = only_run_dir(tmp_path / "out")
    errors = [r["error_message"] for r in read_jsonl(paths.request_records) if r["http_status"] == 400]
    assert errors and all("bad key <redacted>, env <redacted>" in e for e in errors)
    text = all_text_under(tmp_path / "out") + proc.stdout + proc.stderr
    assert CMD_SECRET not in text and ENV_SECRET not in text


def test_server_env_given_on_the_command_line_reaches_no_file(tmp_path: Path) -> None:
    """run.json keeps the command line: each server.env value set there is hidden, whatever its name."""
    cred = "plain-named-cred-4321"
    write_echo_config(tmp_path, sessions=1)

    proc = run_cli(
        [
            "--config",
            "c.veeksha.yml",
            "--server.env",
            f"{{HF_TOKEN: {ENV_SECRET}}}",
            "--server.env.SERVICE_CRED",
            cred,
        ],
        cwd=tmp_path,
    )

    paths = only_run_dir(tmp_path / "out")
    assert "--server.env.SERVICE_CRED" in paths.run_json.read_text()  # the command line is kept
    text = all_text_under(tmp_path / "out") + proc.stdout + proc.stderr
    assert ENV_SECRET not in text and cred not in text and CMD_SECRET not in text


def test_a_failing_command_server_shows_its_command_and_output_without_secrets(tmp_path: Path) -> None:
    script = "import os, sys; print('token', sys.argv[2], os.environ['HF_TOKEN']); sys.exit(3)"
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", script, "--hf-token", CMD_SECRET],
        ready_url=f"http://127.0.0.1:{free_port()}/health",
        env={"HF_TOKEN": ENV_SECRET},
    )
    log = tmp_path / "server.log"

    with pytest.raises(VeekshaError) as caught:
        start_server(cfg, log_path=log)

    message = str(caught.value)
    assert "--hf-token <redacted>" in message and "token <redacted> <redacted>" in message
    assert CMD_SECRET not in message and ENV_SECRET not in message
    kept = log.read_text()
    assert "token <redacted> <redacted>" in kept and CMD_SECRET not in kept and ENV_SECRET not in kept


def test_a_missing_server_binary_is_a_config_error_that_leaves_nothing_behind(tmp_path: Path) -> None:
    private_tmp = tmp_path / "tmp"  # the run's own TMPDIR: tests running beside it make server logs too
    private_tmp.mkdir()
    (tmp_path / "c.veeksha.yml").write_text(
        "output_dir: out\nserver: {type: command, command: [no-such-llm-server, serve], "
        "ready_url: 'http://127.0.0.1:9/health'}\n"
    )

    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path, env={"TMPDIR": str(private_tmp)})

    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "veeksha-run: config error at server.command[0]: 'no-such-llm-server' is not found on PATH; "
        "install the server or give the full path to its executable"
    ]
    assert not (tmp_path / "out").exists()
    assert list(private_tmp.iterdir()) == []


def test_start_server_refuses_a_missing_binary_before_making_a_log(tmp_path: Path) -> None:
    cfg = CommandServerConfig(command=[str(tmp_path / "absent")], ready_url="http://127.0.0.1:9/health")
    with pytest.raises(ConfigError, match="is not an executable file"):
        start_server(cfg, log_path=tmp_path / "server.log")
    assert not (tmp_path / "server.log").exists()
