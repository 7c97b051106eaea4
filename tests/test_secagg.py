"""Secure aggregation as a library: exact sums under drop-outs, refusals, Shamir, AES-GCM, and
what the server sees of one client (statistically nothing)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from fedcore.secagg import (
    AdvertiseKeys,
    MaskedInput,
    RoundContext,
    SecAggClient,
    SecAggError,
    SecAggParams,
    SecAggServer,
    ShareDecryptionError,
    ShareInbox,
    dequantize_mean,
    neighbours,
    quantize,
)
from fedcore.secagg import shamir
from fedcore.secagg.crypto import prg_uint32

D = 257


def _inputs(n: int, bits: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, 1 << bits, D, dtype=np.uint32) for i in range(1, n + 1)}


def run_round(n: int, params: SecAggParams, xs: dict[int, np.ndarray], *, no_keys: set[int] = frozenset(),
              no_shares: set[int] = frozenset(), no_masked: set[int] = frozenset(),
              no_unmask: set[int] = frozenset()) -> tuple[np.ndarray, SecAggServer, dict[int, MaskedInput]]:
    """One protocol round; each set names the clients that drop out before that stage."""
    ctx = RoundContext(os.urandom(16), tuple(range(1, n + 1)), params)
    clients = {i: SecAggClient(ctx, i) for i in ctx.ids}
    server = SecAggServer(ctx, D)
    alive = set(ctx.ids) - no_keys
    for i in sorted(alive):
        server.receive_keys(clients[i].advertise())
    book = server.key_book()
    alive -= no_shares
    for i in sorted(alive):
        server.receive_shares(clients[i].share_keys(book))
    server.close_shares()
    alive -= no_masked
    masked = {}
    for i in sorted(alive):
        masked[i] = clients[i].masked_input(server.inbox_for(i), xs[i])
        server.receive_masked(masked[i])
    survivors = server.survivors()
    alive -= no_unmask
    for i in sorted(alive):
        server.receive_unmask(clients[i].unmask(survivors))
    agg = server.finish()
    return agg.total, server, masked


def plain_sum(xs: dict[int, np.ndarray], ids: set[int] | tuple[int, ...]) -> np.ndarray:
    return np.sum([xs[i].astype(np.int64) for i in ids], axis=0)


@pytest.mark.parametrize("after_mask", [0, 1, 2, 3])
def test_sum_is_exact_with_dropouts_after_masking(after_mask: int) -> None:
    n, params = 7, SecAggParams(bits=16, threshold=4)  # tolerates 3 drop-outs
    xs = _inputs(n, 16, after_mask)
    drop = set(range(n, n - after_mask, -1))
    total, _, _ = run_round(n, params, xs, no_unmask=drop)
    # the dropped clients' inputs are still in the sum: they sent their masked input
    assert np.array_equal(total.astype(np.int64), plain_sum(xs, range(1, n + 1)))


def test_sum_is_exact_with_dropouts_before_masking() -> None:
    n, params = 8, SecAggParams(bits=12, threshold=3)
    xs = _inputs(n, 12, 5)
    total, server, _ = run_round(n, params, xs, no_keys={1}, no_shares={2}, no_masked={3, 8}, no_unmask={4})
    survivors = {4, 5, 6, 7}
    assert np.array_equal(total.astype(np.int64), plain_sum(xs, survivors))
    agg_ids = set(server.survivors().u3)
    assert agg_ids == survivors


def test_secagg_plus_sparse_graph_exact() -> None:
    n, params = 12, SecAggParams(bits=16, threshold=3, neighbours=4)
    graph = neighbours(tuple(range(1, n + 1)), 4, b"session-1234")
    assert all(len(v) == 4 for v in graph.values())
    assert all(i in graph[j] for i, v in graph.items() for j in v)  # symmetric
    xs = _inputs(n, 16, 9)
    total, _, _ = run_round(n, params, xs, no_masked={5}, no_unmask={9})
    assert np.array_equal(total.astype(np.int64), plain_sum(xs, set(range(1, n + 1)) - {5}))


def test_too_many_dropouts_are_refused() -> None:
    n, params = 6, SecAggParams(threshold=4)
    xs = _inputs(n, 16)
    with pytest.raises(SecAggError, match="too many drop-outs"):
        run_round(n, params, xs, no_unmask={1, 2, 3})
    with pytest.raises(SecAggError, match="too many drop-outs"):
        run_round(n, params, xs, no_masked={1, 2, 3})


def test_client_refuses_to_unmask_below_threshold() -> None:
    ctx = RoundContext(os.urandom(16), (1, 2, 3), SecAggParams(threshold=3))
    clients = {i: SecAggClient(ctx, i) for i in ctx.ids}
    server = SecAggServer(ctx, 4)
    for c in clients.values():
        server.receive_keys(c.advertise())
    book = server.key_book()
    for c in clients.values():
        server.receive_shares(c.share_keys(book))
    server.close_shares()
    clients[1].masked_input(server.inbox_for(1), np.zeros(4, np.uint32))
    from fedcore.secagg import Survivors

    with pytest.raises(SecAggError, match="refusing to unmask"):
        clients[1].unmask(Survivors((1, 2)))


def test_overflow_is_refused_up_front() -> None:
    with pytest.raises(SecAggError, match="overflow"):
        RoundContext(os.urandom(16), tuple(range(1, 301)), SecAggParams(bits=24))
    RoundContext(os.urandom(16), tuple(range(1, 256)), SecAggParams(bits=24, threshold=10))  # 255·(2^24−1) < 2^32


def test_masked_input_looks_uniform_and_uncorrelated() -> None:
    n, bits, d = 5, 16, 20_000
    rng = np.random.default_rng(3)
    xs = {i: rng.integers(0, 1 << bits, d, dtype=np.uint32) for i in range(1, n + 1)}
    # a strongly structured input: client 1's update is a ramp
    xs[1] = (np.arange(d, dtype=np.uint32) * 3) % (1 << bits)
    global D
    old, D = D, d
    try:
        total, _, masked = run_round(n, SecAggParams(bits=bits, threshold=3), xs)
    finally:
        D = old
    assert np.array_equal(total.astype(np.int64), plain_sum(xs, range(1, n + 1)))
    y = masked[1].vector.astype(np.float64)
    r = np.corrcoef(y, xs[1].astype(np.float64))[0, 1]
    assert abs(r) < 5 / np.sqrt(d)  # |r| ~ N(0, 1/d) for independent vectors
    # chi-square over 64 equal bins of [0, 2^32): uniform → statistic ~ chi2(63), mean 63, sd ~11
    counts = np.bincount((masked[1].vector >> 26).astype(np.int64), minlength=64)
    chi2 = float(((counts - d / 64) ** 2 / (d / 64)).sum())
    assert chi2 < 63 + 6 * np.sqrt(2 * 63)
    # the same statistics reject the unmasked input (so the checks above can fail)
    raw = np.bincount((xs[1] >> 26).astype(np.int64), minlength=64)
    assert float(((raw - d / 64) ** 2 / (d / 64)).sum()) > 63 + 6 * np.sqrt(2 * 63)
    assert abs(np.corrcoef(xs[1].astype(np.float64) + 0.0 * y, xs[1].astype(np.float64))[0, 1]) > 0.99


def test_shamir_any_threshold_shares_reconstruct_and_fewer_fail() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, 4, list(range(1, 8)))
    for subset in ([1, 2, 3, 4], [7, 5, 3, 1], [2, 4, 6, 7]):
        assert shamir.combine({x: shares[x] for x in subset}, 4) == secret
    with pytest.raises(ValueError, match="cannot reconstruct"):
        shamir.combine({x: shares[x] for x in (1, 2, 3)}, 4)
    # three shares interpolated as if they were enough give a different value (they are
    # consistent with every secret)
    try:
        wrong = shamir.combine({x: shares[x] for x in (1, 2, 3)}, 3)
    except ValueError:
        wrong = b""
    assert wrong != secret
    # independent reference: the degree-3 polynomial through shares 1..4 passes through share 5
    p, pts = shamir.PRIME, [1, 2, 3, 4]
    at5 = 0
    for xi in pts:
        num = den = 1
        for xj in pts:
            if xj != xi:
                num, den = num * (5 - xj) % p, den * (xi - xj) % p
        at5 = (at5 + shares[xi] * num * pow(den, -1, p)) % p
    assert at5 == shares[5]


def test_shamir_altered_share_gives_wrong_secret() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, 3, [1, 2, 3])
    shares[2] = (shares[2] + 1) % shamir.PRIME
    try:
        got: bytes | None = shamir.combine(shares, 3)
    except ValueError:  # most often the result is not even a 32-byte value
        got = None
    assert got != secret


def test_forged_or_misrouted_share_is_detected() -> None:
    ctx = RoundContext(os.urandom(16), (1, 2, 3), SecAggParams(threshold=2))
    clients = {i: SecAggClient(ctx, i) for i in ctx.ids}
    server = SecAggServer(ctx, 4)
    for c in clients.values():
        server.receive_keys(c.advertise())
    book = server.key_book()
    msgs = {i: c.share_keys(book) for i, c in clients.items()}
    forged = bytearray(msgs[2].ciphertexts[1])
    forged[-1] ^= 1
    inbox = ShareInbox((1, 2, 3), {1: msgs[1].ciphertexts[1], 2: bytes(forged), 3: msgs[3].ciphertexts[1]})
    with pytest.raises(ShareDecryptionError):
        clients[1].masked_input(inbox, np.zeros(4, np.uint32))
    # a share for client 2 handed to client 1 (the server swapping ciphertexts) fails too
    inbox = ShareInbox((1, 2, 3), {1: msgs[1].ciphertexts[1], 2: msgs[2].ciphertexts[3], 3: msgs[3].ciphertexts[1]})
    with pytest.raises(ShareDecryptionError):
        SecAggClient.masked_input(clients[1], inbox, np.zeros(4, np.uint32))


def test_server_refuses_out_of_order_and_duplicates() -> None:
    ctx = RoundContext(os.urandom(16), (1, 2), SecAggParams(threshold=2))
    c1 = SecAggClient(ctx, 1)
    server = SecAggServer(ctx, 4)
    adv = c1.advertise()
    server.receive_keys(adv)
    with pytest.raises(SecAggError, match="already"):
        server.receive_keys(adv)
    with pytest.raises(SecAggError, match="not a participant"):
        server.receive_keys(AdvertiseKeys(9, adv.c_pk, adv.s_pk))
    with pytest.raises(SecAggError, match="stage"):
        server.receive_masked(MaskedInput(1, np.zeros(4, np.uint32)))
    with pytest.raises(SecAggError, match="too many drop-outs"):
        server.key_book()  # 1 of 2 advertised; the threshold is 2
    with pytest.raises(SecAggError, match="out of order"):
        c1.advertise()


def test_quantise_round_trip_mean() -> None:
    params = SecAggParams(bits=16, clip=0.5, rounding="nearest")
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 0.2, 1000) for _ in range(5)]
    total = np.sum([quantize(u, params).astype(np.int64) for u in updates], axis=0)
    mean = dequantize_mean(total, 5, params)
    ref = np.mean([np.clip(u, -0.5, 0.5) for u in updates], axis=0)
    assert np.max(np.abs(mean - ref)) <= 0.5 * (1.0 / params.levels) + 1e-12  # half a step at most
    # stochastic rounding is unbiased: the mean error over many coordinates shrinks
    sp = SecAggParams(bits=4, clip=1.0)
    x = np.full(200_000, 0.3)
    q = quantize(x, sp, np.random.default_rng(0))
    assert abs(dequantize_mean(q.astype(np.int64), 1, sp).mean() - 0.3) < 1e-3
    with pytest.raises(SecAggError, match="NaN"):
        quantize(np.array([np.nan]), params)


def test_prg_is_deterministic_and_distinct() -> None:
    a = prg_uint32(b"k" * 32, 10)
    assert np.array_equal(a, prg_uint32(b"k" * 32, 10))
    assert not np.array_equal(a, prg_uint32(b"j" * 32, 10))
