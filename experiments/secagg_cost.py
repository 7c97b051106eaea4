"""Cost of one secure-aggregation round (fedcore.secagg) in one process: per-stage time of one
client (mean over clients) and of the server, and message sizes in the wire form.

    PYTHONPATH=. python experiments/secagg_cost.py --clients 10 --params 100000
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from fedcore.secagg import RoundContext, SecAggClient, SecAggParams, SecAggServer, codec, quantize


def run(n: int, d: int, threshold: int | None, drop_after_share: int, drop_after_mask: int) -> None:
    params = SecAggParams(bits=16, clip=1.0, threshold=threshold)
    ctx = RoundContext(os.urandom(16), tuple(range(1, n + 1)), params)
    rng = np.random.default_rng(0)
    xs = {i: rng.normal(0, 0.1, d) for i in ctx.ids}
    clients = {i: SecAggClient(ctx, i) for i in ctx.ids}
    server = SecAggServer(ctx, d)
    t_client: dict[str, float] = {}
    t_server: dict[str, float] = {}
    size: dict[str, int] = {}

    def timed(stage: str, fn, store: dict[str, float]):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = fn()
        store[stage] = store.get(stage, 0.0) + time.perf_counter() - t0
        return out

    for i, c in clients.items():
        m = timed("advertise", c.advertise, t_client)
        size["advertise (c→s)"] = len(codec.encode_advertise(m))
        timed("advertise", lambda m=m: server.receive_keys(m), t_server)
    book = timed("advertise", server.key_book, t_server)
    size["key book (s→c)"] = len(codec.encode_keybook(book))
    for i, c in clients.items():
        m = timed("share keys", lambda c=c: c.share_keys(book), t_client)
        size["shares (c→s)"] = len(codec.encode_shares(m))
        if i <= drop_after_share:
            continue
        timed("share keys", lambda m=m: server.receive_shares(m), t_server)
    timed("share keys", server.close_shares, t_server)
    alive = [i for i in ctx.ids if i > drop_after_share]
    for i in alive:
        inbox = server.inbox_for(i)
        size["inbox (s→c)"] = len(codec.encode_inbox(inbox))
        m = timed("masked input", lambda i=i, inbox=inbox: clients[i].masked_input(inbox, quantize(xs[i], params)), t_client)
        size["masked input (c→s)"] = len(codec.encode_masked(m))
        timed("masked input", lambda m=m: server.receive_masked(m), t_server)
    surv = timed("masked input", server.survivors, t_server)
    size["survivors (s→c)"] = len(codec.encode_survivors(surv))
    for i in alive[drop_after_mask:]:
        m = timed("unmask", lambda i=i: clients[i].unmask(surv), t_client)
        size["unmask shares (c→s)"] = len(codec.encode_unmask(m))
        timed("unmask", lambda m=m: server.receive_unmask(m), t_server)
    agg = timed("unmask", server.finish, t_server)
    print(f"n={n} d={d} threshold={ctx.threshold} dropped after sharing={drop_after_share} "
          f"dropped after masking={drop_after_mask} survivors={len(agg.survivors)}")
    counts = {"advertise": n, "share keys": n, "masked input": len(alive), "unmask": len(alive) - drop_after_mask}
    for stage in ("advertise", "share keys", "masked input", "unmask"):
        print(f"  {stage:13s} client {1e3 * t_client[stage] / counts[stage]:8.2f} ms each   "
              f"server {1e3 * t_server[stage]:8.2f} ms")
    for k, v in size.items():
        print(f"  {k:22s} {v:>10,d} B")
    print(f"  plain fp32 update      {4 * d:>10,d} B")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--threshold", type=int, default=None)
    a = ap.parse_args()
    for share, mask in ((0, 0), (1, 1), (2, 2)):
        run(a.clients, a.params, a.threshold, share, mask)
