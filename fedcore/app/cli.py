"""The ``fedcore`` command: server, client, demo, status and benchmarks."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from fedcore.config import Settings
from fedcore.errors import ConfigError, FedcoreError

app = typer.Typer(
    help="fedcore: federated learning over gRPC or REST, with model lightweighting on the wire.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()

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
    extra: dict[str, Any] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}")
        extra[key.strip().replace("-", "_")] = value
    try:
        return Settings.load(config, **(extra | flags))
    except ConfigError as exc:
        console.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from exc


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

    from fedcore.app.build import build_federation
    from fedcore.server import FederationServer

    s = _settings(config, set, transport=transport, host=host, rest_port=rest_port, grpc_port=grpc_port,
                  rounds=rounds, min_clients=min_clients, checkpoint_dir=checkpoint_dir, admin_token=admin_token,
                  dataset=dataset, data_dir=data_dir, dtype=dtype, codec=codec)
    generated = False
    if s.admin_token is None and not no_auth:
        s = s.model_copy(update={"admin_token": secrets.token_urlsafe(18)})
        generated = True
    fed = build_federation(s, stop_when_done=exit_when_done)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with FederationServer(fed, s) as srv:
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
                    console.print(f"autorun finished {fed.round}/{s.rounds}")
                    done.wait(2.0)  # let clients read the stop instruction
                    break
        except KeyboardInterrupt:
            pass
    last = fed.history()[-1] if fed.history() else None
    acc = f", accuracy {last.accuracy:.4f}" if last is not None and last.accuracy is not None else ""
    console.print(f"server stopped at round {fed.round}{acc}")


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
    from fedcore.app.apps import load_app
    from fedcore.client import FLClient

    s = _settings(config, set, transport=transport, host=host, rest_port=rest_port, grpc_port=grpc_port,
                  dataset=dataset, data_dir=data_dir, dtype=dtype, codec=codec)
    try:
        made = load_app(app_ref)(s, index)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    fl = FLClient(made.model, made.train_data, val_data=made.val_data, name=name, settings=s,
                  train_fn=made.train_fn, evaluate_fn=made.evaluate_fn, tags=tuple(tag or ()))
    signal.signal(signal.SIGTERM, lambda *_: fl.stop())
    try:
        summary = fl.run(max_rounds=max_rounds, timeout_s=timeout)
    except FedcoreError as exc:
        console.print(f"[red]{name}: {exc}[/red]")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        summary = fl.summary
    finally:
        fl.leave()
    why = f" ({summary.stop_reason})" if summary.stop_reason else ""
    console.print(f"{name}: took part in rounds {summary.rounds}, sent {summary.bytes_sent} B{why}")


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
    """One short red line for the everyday failures (unreachable server, wrong token), exit 2."""
    try:
        return fn()
    except FedcoreError as exc:
        console.print(f"[red]{what}: {exc}[/red]")
        raise typer.Exit(2) from exc


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


@bench_app.command("compression", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_compression(ctx: typer.Context) -> None:
    """Codec comparison on serialized ResNet-18/50 (the REST paper's Tables 7-8). Extra args go to
    `python -m experiments.compression_bench` (see its --help)."""
    from experiments.compression_bench import main

    raise typer.Exit(main(list(ctx.args)))


if __name__ == "__main__":
    app()
