"""What ``make test`` prepares before pytest (scripts/test_services.sh), and what a test says when it must skip.

The script is run for real, as ``make test`` runs it, with a command of our own
in place of pytest. The vLLM server it starts is a stand-in here (a small HTTP
server answering ``/health`` and ``/v1/models`` behind a fake ``venv/bin/python``
in a scratch ``LARRY_VLLM_DIR``): the real one costs 3 GB of RAM and 30 s, and
tests/judging/test_vllm.py already runs against the real one that ``make test``
starts. What is under test is the script's bookkeeping: what it exports, which
server it stops and when.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import services

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "test_services.sh"

FAKE_SERVER = """
import argparse, json
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": "tiny-judge"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie no one reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state


@pytest.fixture
def vllm_dir(tmp_path) -> Path:
    """A scratch LARRY_VLLM_DIR whose "installed vLLM" is the stand-in server, and a built model."""
    directory = tmp_path / "vllm"
    (directory / "venv" / "bin").mkdir(parents=True)
    (directory / "tiny-llama").mkdir()
    (directory / "tiny-llama" / "config.json").write_text("{}")
    server = tmp_path / "fake_vllm.py"
    server.write_text(FAKE_SERVER)
    python = directory / "venv" / "bin" / "python"
    python.write_text(
        "#!/bin/sh\n"
        '[ "$1" = -c ] && exit 0  # import vllm\n'
        f'[ "$1" = -m ] && shift 2 && exec {sys.executable} {server} "$@"\n'
        "exit 1\n"
    )
    python.chmod(0o755)
    # Marks the stand-in as installed, so that the script never installs the real vLLM here.
    requirements = re.search(r'^REQUIREMENTS="(.+)"$', (ROOT / "scripts" / "vllm_judge.sh").read_text(), re.M)[1]
    (directory / "venv" / ".installed").write_text(requirements + "\n")
    return directory


def script_env(tmp_path, **overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LARRY_TEST_VLLM", "LARRY_VLLM"))}
    env.pop("LARRY_REQUIRE_SERVICES", None)
    env.update(LARRY_VLLM_DIR=str(tmp_path / "vllm"), LARRY_SHARED_DIR=str(tmp_path / "no-shared"))
    env.update(overrides)
    return env


# Prints what the tests would see, then records the server's PID, then exits with $EXIT_WITH.
SHOW = (
    'echo "url=${LARRY_TEST_VLLM_URL:-} model=${LARRY_TEST_VLLM_MODEL:-}"; '
    'echo "unavailable=${LARRY_VLLM_UNAVAILABLE:-}"; '
    'cat "$LARRY_VLLM_DIR/server.pid" 2>/dev/null > "$LARRY_VLLM_DIR/pid-seen"; '
    "exit ${EXIT_WITH:-0}"
)


def run_script(env, command=SHOW, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), "sh", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_it_starts_vllm_for_the_command_and_stops_it_when_the_command_fails(tmp_path, vllm_dir):
    port = free_port()
    result = run_script(script_env(tmp_path, LARRY_VLLM_PORT=str(port), EXIT_WITH="3"))
    assert result.returncode == 3, result.stderr  # the command's status is make test's status
    assert f"url=http://127.0.0.1:{port}/v1 model=tiny-judge" in result.stdout, result.stderr
    pid = int((vllm_dir / "pid-seen").read_text())
    assert gone(pid), "the server make test started outlived it"
    assert not (vllm_dir / "server.pid").exists()


def _in_group(pgid: int, name: str) -> bool:
    """Whether a process called ``name`` runs in process group ``pgid`` (read from /proc/<pid>/stat)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        command, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if command == name and int(fields[2]) == pgid:
            return True
    return False


def test_it_stops_the_vllm_it_started_when_interrupted(tmp_path, vllm_dir):
    port = free_port()
    command = 'cat "$LARRY_VLLM_DIR/server.pid" > "$LARRY_VLLM_DIR/pid-seen"; sleep 60'
    process = subprocess.Popen(
        [str(SCRIPT), "sh", "-c", command],
        cwd=ROOT,
        env=script_env(tmp_path, LARRY_VLLM_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, to send it Ctrl-C as a terminal would
        # with Ctrl-C heard: a pytest-xdist worker may ignore SIGINT, and an ignored signal is inherited (bash
        # then cannot even trap it), so the script would never see the Ctrl-C the test sends
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not (vllm_dir / "pid-seen").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (vllm_dir / "pid-seen").exists(), process.communicate()
    # Ctrl-C once the command is in its sleep: sent between its two commands, it may be lost on a loaded machine.
    while not _in_group(process.pid, "sleep") and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)  # a loaded machine may let the sleep run out first
    assert process.returncode == 130, stderr
    assert gone(int((vllm_dir / "pid-seen").read_text())), "Ctrl-C left the vLLM server running"


def test_it_uses_a_vllm_server_already_running_and_leaves_it_running(tmp_path, vllm_dir):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"data": [{"id": "tiny-judge"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    running = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    port = running.server_address[1]
    try:
        result = run_script(script_env(tmp_path, LARRY_VLLM_PORT=str(port)))
        assert result.returncode == 0, result.stderr
        assert f"url=http://127.0.0.1:{port}/v1 model=tiny-judge" in result.stdout, result.stderr
        assert (vllm_dir / "pid-seen").read_text() == ""  # it started none of its own
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # still answering
    finally:
        running.shutdown()


def test_it_says_why_vllm_is_missing_when_the_model_cannot_be_built(tmp_path, vllm_dir):
    (vllm_dir / "tiny-llama" / "config.json").unlink()
    result = run_script(script_env(tmp_path, LARRY_VLLM_PORT=str(free_port())))
    assert result.returncode == 0, result.stderr
    assert "url= " in result.stdout
    unavailable = result.stdout.split("unavailable=")[1]
    assert f"{tmp_path / 'no-shared' / 'tools' / 'make_tiny_llama.py'}" in unavailable
    assert "LARRY_SHARED_DIR=" in unavailable and "make test" in unavailable


def test_it_says_why_vllm_is_missing_when_its_port_is_taken(tmp_path, vllm_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script(script_env(tmp_path, LARRY_VLLM_PORT=str(port)))
    unavailable = result.stdout.split("unavailable=")[1]
    assert f"port {port} is taken" in unavailable and "LARRY_VLLM_PORT=" in unavailable, result.stderr
    assert "url= " in result.stdout


def test_vllm_0_leaves_vllm_out_and_says_how_to_bring_it_back(tmp_path, vllm_dir):
    env = script_env(tmp_path, LARRY_TEST_VLLM="0", LARRY_TEST_VLLM_URL="http://127.0.0.1:9/v1")
    result = run_script(env)
    assert result.returncode == 0, result.stderr
    assert "url= " in result.stdout
    assert "VLLM=0" in result.stdout.split("unavailable=")[1]
    assert (vllm_dir / "pid-seen").read_text() == ""


# The command that provides each service, as each skip message must name it.
PROVIDED_BY = {
    "postgres": "pg_ctlcluster --skip-systemctl-redirect",
    "redis": "redis-server --daemonize yes",
    "chromium": "apt-get install -y chromium",
    "shared_data": "LARRY_SHARED_DIR=",
    "vllm": "make test",
}


@pytest.mark.parametrize("service", sorted(PROVIDED_BY))
def test_a_skip_says_what_is_missing_and_the_command_that_provides_it(service, monkeypatch):
    monkeypatch.delenv("LARRY_REQUIRE_SERVICES", raising=False)
    monkeypatch.delenv("LARRY_VLLM_UNAVAILABLE", raising=False)
    monkeypatch.setattr(services, "available", lambda name: name != service)
    with pytest.raises(pytest.skip.Exception) as skipped:
        services.require(service)
    assert PROVIDED_BY[service] in str(skipped.value)


def test_a_skip_for_vllm_gives_the_reason_make_test_found(monkeypatch):
    monkeypatch.delenv("LARRY_REQUIRE_SERVICES", raising=False)
    monkeypatch.setenv("LARRY_VLLM_UNAVAILABLE", "port 8011 is taken: free it")
    monkeypatch.setattr(services, "available", lambda name: name != "vllm")
    with pytest.raises(pytest.skip.Exception, match="port 8011 is taken: free it"):
        services.require("vllm")


def test_ci_fails_without_vllm_unless_its_model_cannot_be_built_here(monkeypatch, tmp_path):
    monkeypatch.setenv("LARRY_REQUIRE_SERVICES", "1")
    monkeypatch.setattr(services, "available", lambda name: name != "vllm")
    monkeypatch.setattr(services, "TINY_MODEL_BUILDER", tmp_path / "make_tiny_llama.py")
    monkeypatch.setattr(services, "TINY_MODEL", tmp_path / "tiny-llama" / "config.json")
    # Like the data sets, the model builder lives outside the repository, in ../shared.
    with pytest.raises(pytest.skip.Exception):
        services.require("vllm")
    (tmp_path / "make_tiny_llama.py").write_text("")
    with pytest.raises(pytest.fail.Exception, match="LARRY_REQUIRE_SERVICES=1"):
        services.require("vllm")
