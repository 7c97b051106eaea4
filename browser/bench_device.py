"""Measure the browser device beside the Python client, on this machine, in one run.

    PYTHONPATH=. python browser/bench_device.py   (needs `make browser` and Chromium)

Prints, for the digits MLP and the small CNN: ms per local epoch in the page (tfjs, wasm backend,
one thread) and in the Python client (fedcore.loops.train, torch with 1 thread and with all
cores); bf16+zstd encode/decode of the model in the page and in Python; and the page weight
(bytes of JS + wasm the page loads, uncompressed). Nothing is asserted: goals are read off.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from typing import Any

import torch

from fedcore import wire
from fedcore.app.data import load_federated
from fedcore.app.models import build_model
from fedcore.config import Settings
from fedcore.loops import train
from fedcore.server import FederationServer, build_federation


def python_epoch_ms(kind: str, data: Any, epochs: int, threads: int) -> float:
    torch.set_num_threads(threads)
    model = build_model(kind, seed=0)
    train(model, data, epochs=1, batch_size=16, lr=0.05)  # warm-up
    t0 = time.perf_counter()
    train(model, data, epochs=epochs, batch_size=16, lr=0.05)
    return (time.perf_counter() - t0) * 1000 / epochs


def python_codec_ms(kind: str, reps: int) -> tuple[float, float, int]:
    state = build_model(kind, seed=0).state_dict()
    payload = wire.encode_state(state)
    t0 = time.perf_counter()
    for _ in range(reps):
        payload = wire.encode_state(state)
    enc = (time.perf_counter() - t0) * 1000 / reps
    spec = wire.spec_of(state)
    t0 = time.perf_counter()
    for _ in range(reps):
        wire.decode_state(payload, expected=spec)
    return enc, (time.perf_counter() - t0) * 1000 / reps, len(payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    s = Settings.model_validate({"transport": "rest", "rest_port": 0, "num_partitions": 3})
    srv = FederationServer(build_federation(s), s).start()
    url = str(getattr(srv.transports["rest"], "url"))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            sizes: dict[str, int] = {}
            page.on("response", lambda r: sizes.__setitem__(r.url.split("/")[-1], len(r.body())) if "/device/assets/" in r.url else None)
            page.goto(f"{url}/device?shard=0")
            page.wait_for_function("() => window.fedcoreDevice && window.fedcoreDevice.data", timeout=120_000)
            rows = [page.evaluate("([k, e, r]) => window.fedcoreDevice.bench(k, {epochs: e, reps: r})",
                                  [k, args.epochs, args.reps]) for k in ("digits_mlp", "digits_cnn")]
            browser.close()
    finally:
        srv.stop()
    data = load_federated("digits", 3, seed=0).clients[0].train
    cores = os.cpu_count() or 1
    print(f"digits shard 0: {rows[0]['samples']} samples, batch 16, ms per local epoch (after a warm-up epoch)")
    print(f"{'model':<12}{'browser wasm':>14}{'torch 1 thr':>13}{f'torch {cores} thr':>13}{'browser/torch1':>16}")
    for r in rows:
        t1 = python_epoch_ms(r["kind"], data, args.epochs, 1)
        tn = python_epoch_ms(r["kind"], data, args.epochs, cores)
        print(f"{r['kind']:<12}{r['epoch_ms']:>14.1f}{t1:>13.1f}{tn:>13.1f}{r['epoch_ms'] / t1:>16.2f}")
    print("bf16 + zstd parameters, ms per call (goal in the page: <= 20 ms)")
    print(f"{'model':<12}{'page enc':>10}{'page dec':>10}{'py enc':>10}{'py dec':>10}{'bytes':>9}")
    for r in rows:
        enc, dec, n = python_codec_ms(r["kind"], args.reps)
        print(f"{r['kind']:<12}{r['encode_ms']:>10.2f}{r['decode_ms']:>10.2f}{enc:>10.2f}{dec:>10.2f}{r['payload_bytes']:>9}")
    total = sum(sizes.values())
    print(f"page weight (goal <= 1.5 MB): {total} B = " + " + ".join(f"{k} {v}" for k, v in sorted(sizes.items())))


if __name__ == "__main__":
    main()
