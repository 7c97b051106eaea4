"""The CLI's one error boundary: everyday failures become one red line with a hint and exit 2.

A command raises :class:`CliFailure` for a failure it recognises (a busy port, missing data),
and the boundary (:class:`BoundaryGroup`, the click group behind ``fedcore``) turns that, and
the fedcore errors every command can meet (unreachable server, wrong token, bad settings), into
a single line on stderr. Anything else is a bug and keeps its traceback; ``--debug`` or
``FEDCORE_LOG_LEVEL=debug`` shows the traceback of known failures too.
"""
from __future__ import annotations

import difflib
import os
import socket
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from fedcore.errors import AuthError, ConfigError, FedcoreError, TransportError

EXIT_FAILURE = 2
ENV_PREFIX = "FEDCORE_"
# FEDCORE_* variables read outside Settings (the logger, the launcher's children).
# FEDCORE_* variables that are not settings but are read elsewhere: the extension's build
# switches (cuda_ext/build.py), the experiments' client app (experiments/fl_apps.py), the
# benchmarks' Flower interpreter. They are not typos.
OTHER_ENV = {
    "LOG_LEVEL", "BUILD_CUDA", "BUILD_EXT", "BUILD_MODE", "CUDA_ARCHS", "CUDA_EXT_FALLBACK",
    "EXP_SPEC", "EXP_MODEL", "EXP_THREADS", "EXP_NO_VAL", "FLOWER_PYTHON",
}


@dataclass(frozen=True)
class Failure:
    """What went wrong, in the user's words, and what to do about it."""

    message: str
    hint: str = ""

    def line(self) -> str:
        text = " ".join(f"{self.message}{f'; {self.hint}' if self.hint else ''}".split())
        return f"error: {text}"


class CliFailure(Exception):
    """A failure a command recognised; the boundary prints it as one line and exits 2."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.failure = Failure(message, hint)

    @classmethod
    def of(cls, failure: Failure) -> CliFailure:
        return cls(failure.message, failure.hint)


_debug_flag = False


def set_debug(on: bool) -> None:
    """The global --debug option of this invocation."""
    global _debug_flag
    _debug_flag = on


def debug_wanted(flag: bool = False) -> bool:
    return flag or _debug_flag or os.environ.get("FEDCORE_LOG_LEVEL", "").strip().lower() == "debug"


def explain(exc: BaseException) -> Failure | None:
    """The one-line form of a known failure; None for anything else (a bug: keep the traceback)."""
    if isinstance(exc, CliFailure):
        return exc.failure
    if isinstance(exc, AuthError):
        return Failure(f"refused: {_first_line(exc)}",
                       "pass the admin token the server printed at start: --token or FEDCORE_ADMIN_TOKEN")
    if isinstance(exc, TransportError):
        return Failure(_first_line(exc), "is the server running, and are --host, the port and --transport right?")
    if isinstance(exc, FedcoreError):  # ConfigError included: its message says what is wrong
        return Failure(_first_line(exc))
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def print_failure(failure: Failure) -> None:
    typer.secho(failure.line(), err=True, fg="red")


def warn(text: str) -> None:
    typer.secho(f"warning: {text}", err=True, fg="yellow")


class BoundaryGroup(TyperGroup):
    """The ``fedcore`` group: runs the command and catches what :func:`explain` knows."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer vendors click: its class is private)
        try:
            return super().invoke(ctx)
        except Exception as exc:  # typer's own Exit/usage errors are no FedcoreError: they pass through
            failure = explain(exc)
            if failure is None or debug_wanted(bool(ctx.params.get("debug"))):
                raise
            print_failure(failure)
            raise typer.Exit(EXIT_FAILURE) from None


# ---------------------------------------------------------------------- settings
def closest(name: str, choices: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None


def describe_config_error(exc: ConfigError, field_names: Iterable[str], config: Path | None,
                          set_keys: Sequence[str] = ()) -> Failure:
    """One line for invalid settings: where the bad key or value came from (the TOML file,
    --set, the environment) and, for an unknown key, the closest valid one."""
    names = list(field_names)
    cause = exc.__cause__
    if isinstance(cause, tomllib.TOMLDecodeError):
        return Failure(f"{config}: not valid TOML: {_first_line(cause)}")
    errors: list[Mapping[str, Any]] = []
    if cause is not None and hasattr(cause, "errors"):
        errors = list(cause.errors())
    if not errors:
        return Failure(f"invalid settings: {_first_line(exc)}")
    err = errors[0]
    key = ".".join(str(p) for p in err.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if not key:  # a check across settings (e.g. the strategy against min_clients): its message names them
        return Failure(f"invalid settings: {str(err.get('msg', '')).removeprefix('Value error, ')}{more}")
    where = _where(key, config, set_keys)
    if err.get("type") == "extra_forbidden":
        guess = closest(key, names)
        return Failure(f"{where}unknown setting {key!r}{more}", f"did you mean {guess}?" if guess else
                       "see `fedcore server --help` and docs/cli.md for the settings")
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    return Failure(f"{where}{key}: {msg}{more}")


def _where(key: str, config: Path | None, set_keys: Sequence[str]) -> str:
    if key in set_keys:
        return "--set: "
    if config is not None and key in _toml_keys(config):
        return f"{config}: "
    if f"{ENV_PREFIX}{key.upper()}" in os.environ:
        return f"{ENV_PREFIX}{key.upper()}: "
    return ""


def _toml_keys(path: Path) -> set[str]:
    try:
        return set(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError):
        return set()


def env_typos(environ: Mapping[str, str], field_names: Iterable[str]) -> list[str]:
    """Warnings for FEDCORE_* variables that match no setting (they would be ignored silently)."""
    valid = {n.upper() for n in field_names} | OTHER_ENV
    out = []
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        name = var.removeprefix(ENV_PREFIX)
        if name in valid:
            continue
        guess = closest(name, valid)
        hint = f"; did you mean {ENV_PREFIX}{guess}?" if guess else ""
        out.append(f"{var} is not a fedcore setting and is ignored{hint}")
    return out


# ---------------------------------------------------------------------- ports
FLAG_FOR_PORT = {"rest": "--rest-port", "grpc": "--grpc-port"}


def check_ports_free(host: str, ports: Mapping[str, int]) -> None:
    """Fail with one line before anything is built when a configured port is taken (0 = any
    free port, not checked). Binding without SO_REUSEPORT also catches a gRPC server that
    would otherwise share the port silently."""
    taken: dict[int, str] = {}
    for transport, port in ports.items():
        if port == 0:
            continue
        if port in taken:
            raise CliFailure(f"{taken[port]} and {transport} are both configured on port {port}",
                             f"give them different ports: {FLAG_FOR_PORT.get(transport, '--set')}")
        taken[port] = transport
        if not _can_bind(host, port):
            flag = FLAG_FOR_PORT.get(transport, f"--set {transport}_port=")
            raise CliFailure(f"port {port} on {host} ({transport}) is already in use",
                             f"stop what listens there or pick another with {flag} (0 = any free port)")


def _can_bind(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliFailure(f"cannot resolve host {host!r}: {exc.strerror}", "check --host") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
        try:
            sock.bind(address)
        except PermissionError as exc:
            raise CliFailure(f"no permission to listen on port {port}", "use a port above 1023") from exc
        except OSError:
            return False
    return True


def cifar_missing(data_dir: Path | None) -> CliFailure:
    where = f"in {data_dir}" if data_dir else "(no --data-dir given)"
    return CliFailure(
        f"CIFAR-10 data not found {where}",
        "put cifar10_train_*.npz and cifar10_test.npz in a folder laid out like /work/shared/data/cifar10 "
        "(or torchvision's cifar-10-batches-py) and pass --data-dir FOLDER",
    )
