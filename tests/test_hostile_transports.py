"""≥ 1,000 hostile payloads through each live transport (issue 11): every one is answered with
a client error (400/413/409, INVALID_ARGUMENT/RESOURCE_EXHAUSTED/FAILED_PRECONDITION) or
accepted; never a server error, never a crash, and the global model only changes by a round."""
from __future__ import annotations

import time

import pytest
import torch

from conftest import TRANSPORTS, Harness, make_settings, wait_until
from fedcore.errors import PayloadError, RoundStateError, TransportError
from fedcore.states import Action, ClientState
from fedcore.transport import get_transport
from hostile_payloads import hostile_corpus

pytestmark = pytest.mark.timeout(600)
N = 1000


def _step(fed) -> int:
    """Start a round once the previous one has finished closing (aggregation runs after its close)."""
    end = time.monotonic() + 30
    while True:
        try:
            return int(fed.step().round)
        except RoundStateError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hostile_uploads_never_cause_a_server_error(harness: Harness, transport: str) -> None:
    srv = harness.server(make_settings(transport, min_clients=1, max_payload_bytes=512 * 1024))
    fed = srv.federation
    corpus = hostile_corpus(N, 0, state=fed.global_state)
    cs = srv.client_settings()
    t = get_transport(transport).client(cs.address_for(transport), cs)
    outcomes = {"refused": 0, "accepted": 0, "stale": 0}
    started = time.monotonic()
    try:
        t.register("fuzzer", 100)
        open_round = 0
        for payload in corpus:
            if open_round == 0:  # a round for the fuzzer to upload into
                t.signal(ClientState.READY)
                open_round = _step(fed)
                assert t.signal(ClientState.READY, wait_s=5).action is Action.TRAIN
            before = fed.round
            try:
                t.push_update(open_round, payload, 100, {})
                outcomes["accepted"] += 1
                wait_until(lambda: fed.round > before and fed.status().current_round is None, 30, "round close")
                open_round = 0
            except RoundStateError:
                outcomes["stale"] += 1
                open_round = 0
            except PayloadError:  # includes PayloadTooLargeError
                outcomes["refused"] += 1
            except TransportError as exc:  # a 5xx / INTERNAL / dropped connection would land here
                pytest.fail(f"server error on a hostile payload: {exc}")
        assert t.health().ready
    finally:
        t.close()
    assert sum(outcomes.values()) == N
    assert all(torch.isfinite(v.float()).all() for v in fed.global_state.values())
    print(f"\n[{transport}] {N} hostile uploads in {time.monotonic() - started:.1f}s: {outcomes}")
