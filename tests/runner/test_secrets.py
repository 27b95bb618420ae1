"""A server's secrets (values after key-like flags in server.command, every server.env value) reach no
file, console line or record, even when the server prints or echoes them."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from veeksha.runner.server_launcher import start_server
from veeksha.shared.config import CommandServerConfig
from veeksha.shared.errors import ConfigError, VeekshaError

from tests.runner.helpers import all_text_under, only_run_dir, read_jsonl, run_cli, serving

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


# Secrets a server inherits from the runner's environment (never in the config): any variable whose
# name looks like a secret's.
INHERITED = {
    "WANDB_API_KEY": "wandb-inherited-1111",
    "OPENAI_API_KEY": "sk-inherited-2222",
    "HF_TOKEN": "hf_inherited_3333",
    "MY_SERVICE_SECRET": "service-inherited-4444",
}

# A server that echoes those in every error it returns, and prints them as it dies after two requests.
ENV_ECHO_SERVER = textwrap.dedent(
    """
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    port = int(sys.argv[1])
    names = ["WANDB_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "MY_SERVICE_SECRET"]
    env = " ".join(f"{n}={os.environ.get(n)}" for n in names)
    posts = 0

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
            global posts
            posts += 1
            self.rfile.read(int(self.headers["Content-Length"]))
            self.reply(400, {"error": {"message": f"my environment: {env}"}})
            if posts >= 2:
                print("dying with", env, flush=True)
                os._exit(1)

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def assert_no_inherited_secret(text: str) -> None:
    assert not [v for v in INHERITED.values() if v in text]


def test_a_server_that_fails_to_start_hides_the_secrets_it_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in INHERITED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the kept log lands here
    script = "import os; print('my environment:', dict(os.environ)); raise SystemExit(3)"
    cfg = CommandServerConfig(
        command=[sys.executable, "-c", script], ready_url=f"http://127.0.0.1:{free_port()}/health"
    )

    with pytest.raises(VeekshaError) as caught:
        start_server(cfg)

    message = str(caught.value)
    assert "exited with status 3" in message and "my environment:" in message
    assert_no_inherited_secret(message)
    log = re.search(r"Full output: (\S+)\.", message)
    assert log is not None and Path(log[1]).parent == tmp_path
    assert "my environment:" in Path(log[1]).read_text()
    assert_no_inherited_secret(Path(log[1]).read_text())


def test_a_server_that_echoes_its_inherited_secrets_and_dies_mid_run_leaves_them_nowhere(
    tmp_path: Path,
) -> None:
    (tmp_path / "env_echo_server.py").write_text(ENV_ECHO_SERVER)
    port = free_port()
    (tmp_path / "c.veeksha.yml").write_text(
        "output_dir: out\n"
        f"server: {{type: command, command: [{sys.executable}, env_echo_server.py, '{port}'], "
        f"ready_url: 'http://127.0.0.1:{port}/health'}}\n"
        "runtime: {max_sessions: 4}\n"
    )

    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path, env=INHERITED)

    paths = only_run_dir(tmp_path / "out")
    errors = [r["error_message"] for r in read_jsonl(paths.request_records) if r["http_status"] == 400]
    assert errors and all("my environment: WANDB_API_KEY=<redacted>" in e for e in errors)
    assert "the server exited during the run" in paths.run_json.read_text()
    assert "the server exited during the run" in proc.stderr
    assert_no_inherited_secret(all_text_under(tmp_path / "out") + proc.stdout + proc.stderr)


@pytest.mark.parametrize(
    ("command", "secret", "says"),
    [
        ("[HF_TOKEN=hf_OOOO4444, vllm, serve, m]", "OOOO4444", "'HF_TOKEN=<redacted>' is not found on PATH"),
        # Any `NAME=value` first word: server.env values are secrets whatever their names.
        ("[SERVICE_CRED=plain-4545, vllm, serve, m]", "plain-4545", "'SERVICE_CRED=<redacted>'"),
        (
            "['/usr/bin/env VLLM_API_KEY=OOOO6666 vllm serve m']",
            "OOOO6666",
            "'/usr/bin/env VLLM_API_KEY=<redacted> vllm serve m' is not an executable file",
        ),
    ],
)
def test_a_first_command_word_that_is_not_found_is_shown_redacted(
    tmp_path: Path, command: str, secret: str, says: str
) -> None:
    (tmp_path / "c.veeksha.yml").write_text(
        f"server: {{type: command, command: {command}, ready_url: 'http://127.0.0.1:9/health'}}\n"
    )

    proc = run_cli(["--config", "c.veeksha.yml", "--dry-run"], cwd=tmp_path)

    assert proc.returncode == 2
    assert "config error at server.command[0]" in proc.stderr and says in proc.stderr
    assert "server.env" in proc.stderr  # where an environment variable belongs
    assert secret not in proc.stdout + proc.stderr


def test_a_whole_command_line_not_found_hides_the_runs_other_secrets(tmp_path: Path) -> None:
    """A whole command line given as one word (the usual slip) is quoted in the error: the client's
    key and a server.env value written into it, under flags no rule knows, were shown as they are."""
    command = "'no-such-llm-server --upstream sk-client-OOOO7777 --env-file envval-OOOO8888'"
    (tmp_path / "c.veeksha.yml").write_text(
        "client: {api_key: sk-client-OOOO7777}\n"
        f"server: {{type: command, command: [{command}], ready_url: 'http://127.0.0.1:9/health',"
        " env: {SETTING: envval-OOOO8888}}\n"
    )

    proc = run_cli(["--config", "c.veeksha.yml", "--dry-run"], cwd=tmp_path)

    assert proc.returncode == 2
    assert (
        "'no-such-llm-server --upstream <redacted> --env-file <redacted>' is not found on PATH" in proc.stderr
    )
    assert "OOOO7777" not in proc.stdout + proc.stderr and "OOOO8888" not in proc.stdout + proc.stderr


def test_a_first_command_word_that_cannot_run_is_shown_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found on PATH (an executable file by that very name), yet no program the system can run."""
    program = tmp_path / "HF_TOKEN=hf_OOOO5555"
    program.write_text("not a program\0")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = CommandServerConfig(command=[program.name, "serve"], ready_url="http://127.0.0.1:9/health")

    with pytest.raises(VeekshaError) as caught:
        start_server(cfg, log_path=tmp_path / "server.log")

    assert "cannot start server command 'HF_TOKEN=<redacted>'" in str(caught.value)
    assert "OOOO5555" not in str(caught.value)


class HeaderEchoHandler(BaseHTTPRequestHandler):
    """Streams one chat answer that quotes the request's Authorization header, as a debugging proxy
    or a careless server may."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        chunk = {"choices": [{"index": 0, "delta": {"content": f"you sent {self.headers['Authorization']}"}}]}
        body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def header_echo_base() -> Iterator[str]:
    with serving(HeaderEchoHandler) as base:
        yield base


def test_a_reply_echoing_the_key_leaves_it_out_of_the_traced_history(
    tmp_path: Path, header_echo_base: str
) -> None:
    """With trace content on, turn 2's history holds turn 1's reply: what the server echoed there is
    scrubbed when the recorder writes the trace (which is uploaded)."""
    key = "sk-trace-content-7777"
    config = {
        "client": {"api_base": header_echo_base, "model": "m", "api_key": key},
        "session_generator": {
            "session_graph": {
                "type": "linear",
                "inherit_history": True,
                "num_request_generator": {"type": "fixed", "value": 2},
            }
        },
        "trace_recorder": {"include_content": True},
        "runtime": {"max_sessions": 1},
        "output_dir": "out",
    }
    (tmp_path / "c.veeksha.yml").write_text(json.dumps(config))

    proc = run_cli(["--config", "c.veeksha.yml"], cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    paths = only_run_dir(tmp_path / "out")
    assert len(read_jsonl(paths.request_records)) == 2
    traced = paths.dispatch_trace.read_text()
    assert "you sent <redacted>" in traced  # turn 2's history, as the reply was
    assert key not in all_text_under(paths.root) + proc.stdout + proc.stderr
