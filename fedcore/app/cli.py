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
    admin_token: Annotated[Optional[str], typer.Option(help="Token required for round control.")] = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    dtype: DtypeOpt = None,
    codec: CodecOpt = None,
    set: SetOpt = None,
) -> None:
    """Serve a federation on one or more transports until Ctrl-C (or the last round with --exit-when-done)."""
    from fedcore.server import FederationServer, build_federation

    s = _settings(config, set, transport=transport, host=host, rest_port=rest_port, grpc_port=grpc_port,
                  rounds=rounds, min_clients=min_clients, checkpoint_dir=checkpoint_dir, admin_token=admin_token,
                  dataset=dataset, data_dir=data_dir, dtype=dtype, codec=codec)
    fed = build_federation(s, stop_when_done=exit_when_done)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with FederationServer(fed, s) as srv:
        for name, port in srv.ports.items():
            console.print(f"[green]{name}[/green] listening on {s.host}:{port}")
        sys.stdout.flush()
        if autorun:
            fed.start_autorun(s.rounds)
        try:
            while not done.wait(0.5):
                if exit_when_done and fed.status()["finished"]:
                    done.wait(2.0)  # let clients read the stop instruction
                    break
        except KeyboardInterrupt:
            pass
    console.print(f"server stopped at round {fed.round}")


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
    timeout: Annotated[Optional[float], typer.Option(help="Give up after this many seconds.")] = None,
    set: SetOpt = None,
) -> None:
    """Join a federation with one partition of the configured data set and train until told to stop."""
    from fedcore.client import FLClient
    from fedcore.app.data import load_federated
    from fedcore.app.models import build_model

    s = _settings(config, set, transport=transport, host=host, rest_port=rest_port, grpc_port=grpc_port,
                  dataset=dataset, data_dir=data_dir, dtype=dtype, codec=codec)
    data = load_federated(s.dataset, s.num_partitions, partition=s.partition, alpha=s.alpha, seed=s.seed,
                          data_dir=s.data_dir)
    if not 0 <= index < len(data.clients):
        raise typer.BadParameter(f"--index must be in 0..{len(data.clients) - 1}")
    share = data.clients[index]
    model = build_model(s.model, s.dataset, data.num_classes, seed=s.seed)
    fl = FLClient(model, share.train, val_data=share.val, name=name, settings=s)
    signal.signal(signal.SIGTERM, lambda *_: fl.stop())
    try:
        summary = fl.run(max_rounds=max_rounds, timeout_s=timeout)
    except FedcoreError as exc:
        console.print(f"[red]{name}: {type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        summary = fl.summary
    finally:
        fl.leave()
    console.print(f"{name}: took part in rounds {summary.rounds}, sent {summary.bytes_sent} B")


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


@app.command()
def status(
    url: Annotated[str, typer.Option(help="REST address of the server.")] = "http://127.0.0.1:8080",
) -> None:
    """Print a running server's Global Model Status (over REST)."""
    import httpx

    try:
        console.print_json(data=httpx.get(f"{url}/status", timeout=5).json())
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach {url}: {exc}[/red]")
        raise typer.Exit(1) from exc


@bench_app.command("compression", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_compression(ctx: typer.Context) -> None:
    """Codec comparison on serialized ResNet-18/50 (the REST paper's Tables 7-8). Extra args go to
    `python -m experiments.compression_bench` (see its --help)."""
    from experiments.compression_bench import main

    raise typer.Exit(main(list(ctx.args)))


if __name__ == "__main__":
    app()
