"""The ``fedcore`` command: server, client, demo, status and benchmarks."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from fedcore.app.errors_cli import (
    BoundaryGroup,
    CliFailure,
    check_ports_free,
    cifar_missing,
    closest,
    debug_wanted,
    describe_config_error,
    env_typos,
    explain,
    set_debug,
    warn,
)
from fedcore.config import Settings
from fedcore.sim.cli import simulate_command
from fedcore.errors import ConfigError

if TYPE_CHECKING:
    from fedcore.app.apps import AppFactory, ClientApp
    from fedcore.client import FLClient
    from fedcore.federation import Federation
    from fedcore.server import FederationServer

app = typer.Typer(
    cls=BoundaryGroup,
    help="fedcore: federated learning over gRPC or REST, with model lightweighting on the wire.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console(soft_wrap=True)  # one message, one line, whatever the terminal width

# Modules whose INFO lines the CLI replaces with its own (printed once, in the user's words).
TRANSPORT_LOGGERS = ("fedcore.transports.rest.server", "fedcore.transports.grpc.server")


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False) -> None:
    """fedcore: federated learning over gRPC or REST, with model lightweighting on the wire."""
    set_debug(debug)
    if debug:
        logging.getLogger("fedcore").setLevel(logging.DEBUG)


def _quiet(*loggers: str) -> None:
    """Lower these loggers to warnings unless the user asked for a log level (or --debug)."""
    if "FEDCORE_LOG_LEVEL" in os.environ or debug_wanted():
        return
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)

# Options shared by several commands: declared once.
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML settings file.")]
TransportOpt = Annotated[Optional[str], typer.Option(help="rest | grpc (server: comma list, e.g. rest,grpc).")]
HostOpt = Annotated[Optional[str], typer.Option(help="Address to bind / connect to.")]
RestPortOpt = Annotated[Optional[int], typer.Option(help="REST port (0 = any free port).")]
GrpcPortOpt = Annotated[Optional[int], typer.Option(help="gRPC port (0 = any free port).")]
RoundsOpt = Annotated[Optional[int], typer.Option(help="Rounds to run on autorun.")]
DatasetOpt = Annotated[Optional[str], typer.Option(help="digits (bundled) | cifar10.")]
DataDirOpt = Annotated[Optional[Path], typer.Option(help="CIFAR-10 folder (npz files or torchvision layout).")]
DtypeOpt = Annotated[Optional[str], typer.Option(help="Wire dtype: fp32 | bf16 | fp16.")]
CodecOpt = Annotated[Optional[str], typer.Option(help="Compression codec: zstd, lz4, gzip, none, ...")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Any other setting, KEY=VALUE (repeatable).")]


def _settings(config: Path | None, sets: list[str] | None, **flags: Any) -> Settings:
    """Settings from the file, FEDCORE_* and flags; a mistake is one line naming where it is."""
    extra: dict[str, Any] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}")
        extra[key.strip().replace("-", "_")] = value
    for line in env_typos(os.environ, Settings.model_fields):
        warn(line)
    try:
        return Settings.load(config, **(extra | {k: v for k, v in flags.items() if v is not None}))
    except ConfigError as exc:
        raise CliFailure.of(describe_config_error(exc, Settings.model_fields, config, list(extra))) from exc


def _check_names(s: Settings) -> None:
    """Model and strategy names are free strings (users register their own): check them now,
    before anything is built or bound."""
    from fedcore.app.models import MODELS
    from fedcore.strategy import strategy_from_settings

    if s.model != "auto" and s.model not in MODELS:
        guess = closest(s.model, MODELS)
        raise CliFailure(f"unknown model {s.model!r}; choose auto or one of {', '.join(sorted(MODELS))}",
                         f"did you mean {guess}?" if guess else "")
    try:
        strategy_from_settings(s)
    except ValueError as exc:
        raise CliFailure(str(exc)) from exc


def _ports(s: Settings) -> dict[str, int]:
    return {t: getattr(s, f"{t}_port") for t in s.transports if hasattr(s, f"{t}_port")}


@app.command()
def server(
    config: ConfigOpt = None,
    transport: TransportOpt = None,
    host: HostOpt = None,
    rest_port: RestPortOpt = None,
    grpc_port: GrpcPortOpt = None,
    rounds: RoundsOpt = None,
    min_clients: Annotated[Optional[int], typer.Option(help="Clients needed to start a round.")] = None,
    autorun: Annotated[bool, typer.Option(help="Start autorun for --rounds at once.")] = False,
    exit_when_done: Annotated[bool, typer.Option(help="Tell clients to stop and exit after the last round.")] = False,
    checkpoint_dir: Annotated[Optional[Path], typer.Option(help="Checkpoint folder (resume on restart).")] = None,
    admin_token: Annotated[Optional[str], typer.Option(help="Token required for round control (generated when omitted).")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Leave round control open (local experiments only).")] = False,
    app_ref: Annotated[Optional[str], typer.Option("--app", help="The model of your ClientApp (module:callable), scored on its val_data.")] = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    dtype: DtypeOpt = None,
    codec: CodecOpt = None,
    set: SetOpt = None,
) -> None:
    """Serve a federation on one or more transports until Ctrl-C (or the last round with --exit-when-done).

    With --checkpoint-dir, a restarted server resumes at its last completed round and, with
    --autorun --rounds N, continues toward N rounds in all (it does not start N more)."""
    import secrets

    s = _settings(config, set, transport=transport, host=host, rest_port=rest_port, grpc_port=grpc_port,
                  rounds=rounds, min_clients=min_clients, checkpoint_dir=checkpoint_dir, admin_token=admin_token,
                  dataset=dataset, data_dir=data_dir, dtype=dtype, codec=codec)
    check_ports_free(s.host, _ports(s))  # before torch, the model and the data: fail in a blink
    _check_names(s)

    from fedcore.server import FederationServer
    generated = False
    if s.admin_token is None and not no_auth:
        s = s.model_copy(update={"admin_token": secrets.token_urlsafe(18)})
        generated = True
    fed = _build_server(s, app_ref, exit_when_done)
    _quiet(*TRANSPORT_LOGGERS)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    started = time.monotonic()
    srv = _start(FederationServer(fed, s))
    try:
        for name, address in srv.endpoints.items():
            console.print(f"[green]{name}[/green] listening on {address}")
        if "rest" in srv.endpoints:
            console.print(f"dashboard: {srv.endpoints['rest']}/")
        if generated:
            console.print(f"admin token (generated, shown once): [bold]{s.admin_token}[/bold]")
        elif no_auth and s.admin_token is None:
            console.print("[yellow]--no-auth: round control is open to anyone who can reach this server[/yellow]")
        sys.stdout.flush()
        if autorun:
            if fed.round > 0 and fed.autorun_stopped:
                console.print(f"resumed at round {fed.round}; autorun was stopped before the restart, not resuming")
            else:
                fed.autorun_to(s.rounds)
                if fed.round > 0:
                    console.print(f"resumed at round {fed.round}; autorun continues to round {s.rounds}")
        try:
            while not done.wait(0.5):
                if exit_when_done and fed.status().finished:
                    done.wait(2.0)  # let clients read the stop instruction
                    break
        except KeyboardInterrupt:
            pass
    finally:
        srv.stop()
    console.print(_server_summary(fed, time.monotonic() - started))


def _start(srv: FederationServer) -> FederationServer:
    """Start the transports; losing a port to another process since the check is one line too."""
    from fedcore.errors import TransportError

    uvicorn_log = logging.getLogger("uvicorn.error")  # says "[Errno 98] ..." itself: we say it once
    level = uvicorn_log.level
    if not debug_wanted():
        uvicorn_log.setLevel(logging.CRITICAL)
    try:
        return srv.start()
    except TransportError as exc:
        raise CliFailure(str(exc), "pick other ports with --rest-port / --grpc-port (0 = any free port)") from exc
    finally:
        uvicorn_log.setLevel(level)


def _load_app(ref: str | None) -> AppFactory:
    from fedcore.app.apps import load_app

    try:
        return load_app(ref)
    except ConfigError as exc:
        raise CliFailure(str(exc), "run from your project's folder or add it to PYTHONPATH") from exc


def _build_server(s: Settings, app_ref: str | None, exit_when_done: bool) -> Federation:
    """The Federation for the zoo model on the configured data set, or for a ClientApp's model
    (``--app``), scored on that app's val_data with its evaluate function."""
    from fedcore.app.build import build_federation

    if app_ref is None:
        try:
            return build_federation(s, stop_when_done=exit_when_done)
        except FileNotFoundError as exc:
            if s.dataset == "cifar10":
                raise cifar_missing(s.data_dir) from exc
            raise
    import copy

    from fedcore.loops import evaluate

    made = _load_app(app_ref)(s, 0)  # the server uses partition 0's val_data as its test set
    scorer, val, score = copy.deepcopy(made.model), made.val_data, made.evaluate_fn or evaluate

    def evaluate_fn(state: Any) -> dict[str, float]:
        if val is None or len(val) == 0:  # type: ignore[arg-type]
            return {}
        scorer.load_state_dict(state)
        return dict(score(scorer, val))

    return build_federation(s, model=made.model, evaluate_fn=evaluate_fn, stop_when_done=exit_when_done)


def _server_summary(fed: Federation, wall_s: float) -> str:
    history = fed.history()
    if not history:
        return f"server stopped at round {fed.round}: no round completed this run ({wall_s:.0f}s)"
    last = history[-1]
    scored = [h for h in history if h.accuracy is not None]
    acc = ""
    if last.accuracy is not None:
        best = max(scored, key=lambda h: h.accuracy or 0.0)
        acc = f", accuracy {last.accuracy:.4f} (best {best.accuracy:.4f} at round {best.round})"
    clients = sorted({p for h in history for p in h.participants})
    bytes_in, bytes_out = sum(h.bytes_in for h in history), sum(h.bytes_out for h in history)
    return (f"server stopped at round {fed.round}{acc}; {len(history)} round(s) with "
            f"{len(clients)} client(s), {bytes_in:,} B in / {bytes_out:,} B out, {wall_s:.0f}s")


@app.command()
def client(
    name: Annotated[str, typer.Option(help="Client name (shown on the dashboard).")],
    index: Annotated[int, typer.Option(help="Which data partition this client holds (0-based).")] = 0,
    config: ConfigOpt = None,
    transport: TransportOpt = None,
    host: HostOpt = None,
    rest_port: RestPortOpt = None,
    grpc_port: GrpcPortOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    dtype: DtypeOpt = None,
    codec: CodecOpt = None,
    max_rounds: Annotated[Optional[int], typer.Option(help="Leave after this many rounds.")] = None,
    app_ref: Annotated[Optional[str], typer.Option("--app", help="Your own model/data/loops: module:callable returning a ClientApp.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="A tag shown on the dashboard (repeatable).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Give up after this many seconds.")] = None,
    set: SetOpt = None,
) -> None:
    """Join a federation with one partition of the configured data set (or your own --app) and train until told to stop."""
    s = _settings(config, set, transport=transport, host=host, rest_port=rest_port, grpc_port=grpc_port,
                  dataset=dataset, data_dir=data_dir, dtype=dtype, codec=codec)
    if app_ref is None:
        _check_names(s)
    try:
        made = _load_app(app_ref)(s, index)
    except FileNotFoundError as exc:
        if app_ref is None and s.dataset == "cifar10":
            raise cifar_missing(s.data_dir) from exc
        raise
    _quiet("fedcore.client")  # this command prints the client's progress itself
    fl = _console_client(made, name, s, tuple(tag or ()))
    signal.signal(signal.SIGTERM, lambda *_: fl.stop())
    try:
        summary = fl.run(max_rounds=max_rounds, timeout_s=timeout)
    except KeyboardInterrupt:
        summary = fl.summary
    finally:
        fl.leave()
    why = f" ({summary.stop_reason})" if summary.stop_reason else ""
    console.print(f"{name}: took part in rounds {summary.rounds}, sent {summary.bytes_sent:,} B{why}")


def _console_client(made: ClientApp, name: str, s: Settings, tags: tuple[str, ...]) -> FLClient:
    """An FLClient that tells the user when it connects and what each round gave locally."""
    from fedcore.client import FLClient

    class ConsoleClient(FLClient):
        connected_before = False

        def connect(self, timeout_s: float | None = None) -> None:
            if self.connected_before:
                super().connect(timeout_s)
            else:
                self._first_connect(timeout_s)
            verb = "reconnected" if self.connected_before else "connected"
            self.connected_before = True
            console.print(f"{self.name}: {verb} to {self.transport.address} over {self.transport_name} "
                          f"as {self.client_id}")

        def _first_connect(self, timeout_s: float | None) -> None:
            """Quiet retries: one line if the server is slow to appear, one line if it never does."""
            from fedcore.errors import TransportError

            address = self.transport.address
            waiting = threading.Timer(3.0, lambda: console.print(
                f"{self.name}: waiting for a fedcore server at {address} ..."))
            waiting.daemon = True
            log = logging.getLogger("fedcore.client")
            level = log.level
            if not debug_wanted():
                log.setLevel(logging.ERROR)
            waiting.start()
            try:
                super().connect(timeout_s)
            except TransportError as exc:
                raise CliFailure(str(exc)) from exc
            finally:
                waiting.cancel()
                log.setLevel(level)

    def round_done(c: FLClient, number: int) -> None:
        if not c.summary.rounds or c.summary.rounds[-1] != number:
            return  # the update was dropped (the round closed without it): already warned
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in c.summary.metrics[-1].items())
        console.print(f"{c.name}: round {number} over {c.transport_name}: {metrics}")

    fl = ConsoleClient(made.model, made.train_data, val_data=made.val_data, name=name, settings=s,
                       train_fn=made.train_fn, evaluate_fn=made.evaluate_fn, tags=tags, on_round_end=round_done)
    fl.secagg_after_stage = made.secagg_after_stage
    return fl


@app.command()
def demo(
    clients: Annotated[int, typer.Option(help="Client processes to start.")] = 3,
    rounds: Annotated[int, typer.Option(help="Rounds to run.")] = 5,
    transport: Annotated[str, typer.Option(help="rest | grpc (clients alternate when both: rest,grpc).")] = "rest",
    dataset: Annotated[str, typer.Option(help="digits (bundled) | cifar10.")] = "digits",
    data_dir: DataDirOpt = None,
    dtype: Annotated[str, typer.Option(help="Wire dtype: fp32 | bf16 | fp16.")] = "bf16",
    codec: Annotated[str, typer.Option(help="Compression codec.")] = "zstd",
    out: Annotated[Path, typer.Option(help="Folder for history.json and accuracy.png.")] = Path("runs/demo"),
    set: SetOpt = None,
) -> None:
    """Start a server and N client processes on loopback, run R rounds, print accuracy and bytes per round."""
    import logging
    import os

    from fedcore.app.demo import run_demo

    if "FEDCORE_LOG_LEVEL" not in os.environ:  # the progress display says what the logs would
        logging.getLogger("fedcore").setLevel(logging.WARNING)
    s = _settings(None, set, transport=transport, dataset=dataset, data_dir=data_dir, dtype=dtype, codec=codec,
                  rounds=rounds, min_clients=clients, num_partitions=clients, rest_port=0, grpc_port=0)
    history = run_demo(s, clients=clients, out=out, console=console)
    if not history:
        raise typer.Exit(1)


def _connect(config: Path | None, transport: str | None, host: str | None, rest_port: int | None,
             grpc_port: int | None, admin_token: str | None = None) -> Any:
    """A client transport to a running server (any registered transport), for status and admin."""
    from fedcore.transport import get_transport

    s = _settings(config, None, transport=transport, host=host, rest_port=rest_port, grpc_port=grpc_port,
                  admin_token=admin_token)
    name = s.transports[0]
    return get_transport(name).client(s.address_for(name), s)


def _run_remote(fn: Any, what: str) -> Any:
    """The everyday failures (unreachable server, wrong token) as one line saying what failed."""
    try:
        return fn()
    except Exception as exc:
        failure = explain(exc)
        if failure is None:
            raise
        raise CliFailure(f"{what}: {failure.message}", failure.hint) from exc


@app.command()
def status(
    config: ConfigOpt = None,
    transport: TransportOpt = None,
    host: HostOpt = None,
    rest_port: RestPortOpt = None,
    grpc_port: GrpcPortOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print a running server's Global Model Status and its clients (over either transport)."""
    from dataclasses import asdict

    from rich.table import Table

    with _connect(config, transport, host, rest_port, grpc_port) as t:
        st = _run_remote(t.status, f"cannot read status from {t.address}")
        clients = _run_remote(t.clients, f"cannot read clients from {t.address}")
    if as_json:
        console.print_json(data={"status": asdict(st), "clients": [asdict(c) for c in clients]})
        return
    auto = f"on, to round {st.autorun_target}" if st.autorun else ("finished" if st.finished else "off")
    acc = f"{st.accuracy:.4f}" if st.accuracy is not None else "n/a"
    console.print(f"round {st.round} (open: {st.current_round or '-'}), autorun {auto}, "
                  f"{st.num_clients} client(s), {st.ready} ready, last accuracy {acc}")
    table = Table()
    for col in ("name", "id", "state", "transport", "rounds", "tags"):
        table.add_column(col)
    for c in clients:
        switch = f" → {c.wanted_transport}" if c.wanted_transport else ""
        table.add_row(c.name, c.client_id, c.state, c.transport + switch, str(len(c.rounds)), ",".join(c.tags))
    console.print(table)


app.command("simulate")(simulate_command)

admin_app = typer.Typer(help="Round control of a running server (needs the admin token).", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
AdminTokenOpt = Annotated[Optional[str], typer.Option(envvar="FEDCORE_ADMIN_TOKEN", help="The server's admin token.")]


def _admin(op: str, config: Path | None, transport: str | None, host: str | None, rest_port: int | None,
           grpc_port: int | None, token: str | None, *args: Any) -> None:
    with _connect(config, transport, host, rest_port, grpc_port, token) as t:
        result = _run_remote(lambda: getattr(t, op)(*args), op.replace("_", " "))
    st = result.status
    console.print(f"{result.operation}: ok; round {st.round}, open round {st.current_round or '-'}, "
                  f"autorun {'to round ' + str(st.autorun_target) if st.autorun else 'off'}")


@admin_app.command("autorun")
def admin_autorun(rounds: int, config: ConfigOpt = None, transport: TransportOpt = None, host: HostOpt = None,
                  rest_port: RestPortOpt = None, grpc_port: GrpcPortOpt = None, token: AdminTokenOpt = None) -> None:
    """Run N more rounds, each as soon as enough clients are ready."""
    _admin("start_autorun", config, transport, host, rest_port, grpc_port, token, rounds)


@admin_app.command("stop")
def admin_stop(config: ConfigOpt = None, transport: TransportOpt = None, host: HostOpt = None,
               rest_port: RestPortOpt = None, grpc_port: GrpcPortOpt = None, token: AdminTokenOpt = None) -> None:
    """Stop autorun (an open round still completes)."""
    _admin("stop_autorun", config, transport, host, rest_port, grpc_port, token)


@admin_app.command("step")
def admin_step(config: ConfigOpt = None, transport: TransportOpt = None, host: HostOpt = None,
               rest_port: RestPortOpt = None, grpc_port: GrpcPortOpt = None, token: AdminTokenOpt = None) -> None:
    """Start one round now."""
    _admin("step", config, transport, host, rest_port, grpc_port, token)


@admin_app.command("kick")
def admin_kick(client_id: str, config: ConfigOpt = None, transport: TransportOpt = None, host: HostOpt = None,
               rest_port: RestPortOpt = None, grpc_port: GrpcPortOpt = None, token: AdminTokenOpt = None) -> None:
    """Remove a client from the federation."""
    _admin("kick", config, transport, host, rest_port, grpc_port, token, client_id)


@admin_app.command("switch")
def admin_switch(client_id: str, to: str, config: ConfigOpt = None, transport: TransportOpt = None,
                 host: HostOpt = None, rest_port: RestPortOpt = None, grpc_port: GrpcPortOpt = None,
                 token: AdminTokenOpt = None) -> None:
    """Ask a client to move to another served transport before its next round."""
    _admin("request_transport", config, transport, host, rest_port, grpc_port, token, client_id, to)


@bench_app.command("compression", add_help_option=False,
                   context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_compression(ctx: typer.Context) -> None:
    """Codec comparison on serialized ResNet-18/50 (the REST paper's Tables 7-8); every option
    (see --help) goes to experiments/compression_bench.py. Results go to a new runs/ folder
    unless --out is given."""
    from experiments.compression_bench import main as bench_main

    args = list(ctx.args)
    if not any(a in ("-h", "--help") or a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", f"runs/compression-{time.strftime('%Y%m%d-%H%M%S')}"]
    raise typer.Exit(bench_main(args))


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="Project and package name (a Python identifier).")],
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the project folder.")] = Path("."),
) -> None:
    """Write a small runnable project: client app, server.toml, pyproject.toml, README.

    NAME/client_app.py holds the model, data, train and evaluate functions and make_app;
    the README has the commands that run it (server --app and two clients)."""
    from fedcore.app.template import write_project

    root = write_project(name, directory / name)
    console.print(f"created {root}/ ; next: cd {root} and follow README.md "
                  f"(fedcore server --config server.toml --app {name}.client_app:make_app)")


if __name__ == "__main__":
    app()
