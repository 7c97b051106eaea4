"""A federated client process for the accuracy experiments.

    python -m experiments.fl_client --name client_1 --index 0 --transport rest --rest-port 8080 \
        --spec '{"num_clients": 2, "mode": "paper", ...}' --model cifar_cnn_s

It computes its data share with experiments.partitions (the paper's Table 5/6 counts), then runs
the real fedcore.client.FLClient over the real transport until the server says stop. Every
other setting (wire dtype, codec, heartbeat, ...) comes from FEDCORE_* variables or --set.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.fl_client", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--index", type=int, required=True, help="which share of the partition (0-based)")
    p.add_argument("--spec", required=True, help="experiments.partitions.PartitionSpec as JSON")
    p.add_argument("--model", default="cifar_cnn_s")
    p.add_argument("--transport", default="rest", choices=["rest", "grpc"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--rest-port", type=int, default=None)
    p.add_argument("--grpc-port", type=int, default=None)
    p.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: N clients share the cores)")
    p.add_argument("--no-val", action="store_true", help="skip the per-round local validation")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other fedcore setting")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from experiments.models_small import make_model
    from experiments.partitions import PartitionSpec, client_splits
    from fedcore.client import FLClient
    from fedcore.config import Settings
    from fedcore.errors import FedcoreError

    spec = PartitionSpec.from_json(args.spec)
    extra = dict(item.split("=", 1) for item in args.set)
    settings = Settings.load(
        None, **extra, transport=args.transport, host=args.host, rest_port=args.rest_port,
        grpc_port=args.grpc_port, local_epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=spec.seed, dataset="cifar10",
    )
    share = client_splits(spec, args.index)
    model = make_model(args.model, seed=spec.seed)
    fl = FLClient(model, share.train, val_data=None if args.no_val else share.val, name=args.name,
                  settings=settings, transport=args.transport)
    signal.signal(signal.SIGTERM, lambda *_: fl.stop())
    try:
        summary = fl.run(timeout_s=args.timeout)
    except FedcoreError as exc:
        print(f"{args.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        summary = fl.summary
    finally:
        fl.leave()
    print(f"{args.name}: {len(share.train)} training images; rounds {summary.rounds}; "
          f"sent {summary.bytes_sent} B, received {summary.bytes_received} B", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
