"""The CLI's error boundary: every everyday failure is one line on stderr and exit code 2.

Failures that involve the network, logging or a server run ``python -m fedcore`` as a real
process (what a user types), so log lines, warnings and tracebacks all count against the
single line; settings mistakes, which fail before any of that, run in-process (CliRunner).
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT, make_settings
from fedcore.app.cli import app
from fedcore.app.errors_cli import CliFailure
from fedcore.app.build import build_federation
from fedcore.server import FederationServer

TIMEOUT_S = 120


def fedcore(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FEDCORE_")}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fedcore", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=TIMEOUT_S)


def in_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The same command through click's test runner (no process start: for settings mistakes)."""
    clean = {k: None for k in os.environ if k.startswith("FEDCORE_")}
    result = CliRunner().invoke(app, list(args), env=clean | (env or {}))  # type: ignore[operator]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a failure printed (stderr), after checking there is nothing else."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert not [line for line in proc.stdout.splitlines() if line.strip()], proc.stdout
    return lines[0]


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[FederationServer]:
    s = make_settings(admin_token="the-right-token")
    with FederationServer(build_federation(s), s) as srv:
        yield srv


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_port_in_use(busy_port: int, transport: str) -> None:
    line = one_error_line(fedcore("server", "--transport", transport, f"--{transport}-port", str(busy_port)))
    assert f"port {busy_port}" in line and "in use" in line and f"--{transport}-port" in line


def test_same_port_for_both_transports(closed_port: int) -> None:
    line = one_error_line(in_process("server", "--transport", "rest,grpc", "--rest-port", str(closed_port),
                                  "--grpc-port", str(closed_port)))
    assert "both" in line and str(closed_port) in line


def test_unknown_transport_fails_before_binding(closed_port: int) -> None:
    line = one_error_line(in_process("server", "--transport", "rest,quic", "--rest-port", str(closed_port)))
    assert "unknown transport 'quic'" in line and "rest" in line
    with socket.socket() as sock:  # the error came before anything bound (and nothing lingers)
        sock.bind(("127.0.0.1", closed_port))


def test_cifar_without_data(tmp_path: Path) -> None:
    line = one_error_line(in_process("server", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--rest-port", "0"))
    assert "CIFAR-10" in line and str(tmp_path) in line and "--data-dir" in line and "cifar10_test.npz" in line


@pytest.mark.parametrize("command", [["status"], ["admin", "stop"], ["client", "--name", "c", "--timeout", "1"]])
def test_unreachable_server(closed_port: int, command: list[str]) -> None:
    line = one_error_line(fedcore(*command, "--rest-port", str(closed_port)))
    assert f"127.0.0.1:{closed_port}" in line


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_wrong_admin_token(guarded_server: FederationServer, transport: str) -> None:
    port = guarded_server.ports[transport]
    line = one_error_line(fedcore("admin", "autorun", "3", "--transport", transport, f"--{transport}-port", str(port),
                                  "--token", "a-wrong-token"))
    assert "token" in line and "FEDCORE_ADMIN_TOKEN" in line
    assert guarded_server.federation.status().autorun is False


def test_toml_typo_names_file_key_and_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text('transport = "rest"\nrest_prot = 8080\n')
    line = one_error_line(in_process("server", "--config", str(cfg)))
    assert str(cfg) in line and "'rest_prot'" in line and "did you mean rest_port" in line


def test_toml_syntax_error(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("rest_port = \n")
    line = one_error_line(in_process("server", "--config", str(cfg)))
    assert str(cfg) in line and "TOML" in line and "line 1" in line


def test_bad_value_names_setting(tmp_path: Path) -> None:
    line = one_error_line(in_process("server", "--set", "min_clients=0", "--rest-port", "0"))
    assert "min_clients" in line and "--set" in line


def test_unknown_model_suggests_closest() -> None:
    line = one_error_line(in_process("server", "--set", "model=digits_mpl", "--rest-port", "0"))
    assert "did you mean digits_mlp" in line


def test_mistyped_environment_variable_warns(closed_port: int) -> None:
    """The typo is one warning with the closest name; the command then goes on (and here fails
    to reach a server, as the port the user meant was ignored)."""
    proc = fedcore("status", "--rest-port", str(closed_port), env={"FEDCORE_REST_PROT": "9"})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, proc.stderr
    assert lines[0] == "warning: FEDCORE_REST_PROT is not a fedcore setting and is ignored; " \
                       "did you mean FEDCORE_REST_PORT?"
    assert lines[1].startswith("error: ")


def test_debug_shows_the_traceback(busy_port: int) -> None:
    """--debug (or FEDCORE_LOG_LEVEL=debug) lets the failure through with its traceback."""
    cases: list[tuple[list[str], dict[str, str | None]]] = [
        (["--debug", "server", "--rest-port", str(busy_port)], {}),
        (["server", "--rest-port", str(busy_port)], {"FEDCORE_LOG_LEVEL": "debug"}),
    ]
    root = logging.getLogger("fedcore")
    level = root.level
    try:
        for args, env in cases:
            result = CliRunner().invoke(app, args, env=env)
            assert isinstance(result.exception, CliFailure), result.output
            assert "in use" in str(result.exception)
    finally:
        root.setLevel(level)  # --debug lowered it for this process


def test_app_that_cannot_be_imported() -> None:
    line = one_error_line(in_process("client", "--name", "c", "--app", "no_such_project.client_app:make_app"))
    assert "no_such_project" in line and "PYTHONPATH" in line
