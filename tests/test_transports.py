"""Transport contract suite: written once, run against every transport (rest, grpc) over real sockets."""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import NETWORK_TRANSPORTS, TRANSPORTS, Harness, make_settings, wait_until
from fedcore import wire
from fedcore.errors import AuthError, PayloadError, PayloadTooLargeError, RoundStateError, UnknownClientError
from fedcore.operations import RoundRecord
from fedcore.states import Action, ClientState
from fedcore.transport import get_transport

pytestmark = pytest.mark.timeout(180)


def _names(entry: RoundRecord) -> list[str]:
    return sorted(entry.participants)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_three_clients_rounds(harness: Harness, transport: str) -> None:
    srv = harness.server(make_settings(transport, min_clients=3), stop_when_done=True)
    cs = [harness.client(srv, f"c{i}", i, transport=transport) for i in range(3)]
    wait_until(lambda: srv.federation.status().ready == 3, what="3 ready clients")
    srv.federation.start_autorun(2)
    assert srv.federation.wait_for_round(2, 60)
    hist = srv.federation.history()
    assert [_names(h) for h in hist] == [["c0", "c1", "c2"]] * 2
    assert all(h.bytes_in > 0 and h.bytes_out > 0 for h in hist)
    assert {c.transport for c in srv.federation.clients()} == {transport}
    for c in cs:
        c.thread.join(20)
        assert c.error is None and c.result.rounds == [1, 2]


@pytest.mark.parametrize("transport", NETWORK_TRANSPORTS)
def test_client_process_killed_mid_round(harness: Harness, transport: str) -> None:
    srv = harness.server(make_settings(transport, min_clients=3, client_timeout_s=2.0))
    fed = srv.federation
    harness.client(srv, "steady0", 0, transport=transport)
    harness.client(srv, "steady1", 1, transport=transport)
    victim = harness.client_process(srv, "victim", 2, transport=transport, extra=["--set", "local_epochs=100000"])
    wait_until(lambda: fed.status().ready == 3, 90, "3 ready clients (one is a process)")
    fed.start_autorun(1)
    wait_until(lambda: {c.name: c.state for c in fed.clients()}.get("victim") == "training", 30,
               "victim to be training")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert fed.wait_for_round(1, 30), "round did not complete without the killed client"
    h = fed.history()[0]
    assert _names(h) == ["steady0", "steady1"] and h.dropped == ("victim",)
    assert fed.status().num_clients == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_late_joiner_takes_part_from_next_round(harness: Harness, transport: str) -> None:
    from fedcore.loops import train

    def slow_train(*a, **kw):
        time.sleep(1.0)
        return train(*a, **kw)

    srv = harness.server(make_settings(transport, min_clients=2))
    fed = srv.federation
    harness.client(srv, "early0", 0, transport=transport, train_fn=slow_train)
    harness.client(srv, "early1", 1, transport=transport, train_fn=slow_train)
    wait_until(lambda: fed.status().ready == 2, what="2 ready clients")
    fed.start_autorun(2)
    wait_until(lambda: fed.status().current_round == 1, what="round 1 to start")
    harness.client(srv, "late", 2, transport=transport)
    wait_until(lambda: any(c.name == "late" for c in fed.clients()), what="late client to register")
    assert fed.status().current_round == 1, "round 1 ended before the late client joined"
    assert fed.wait_for_round(2, 60)
    hist = fed.history()
    assert _names(hist[0]) == ["early0", "early1"]
    assert _names(hist[1]) == ["early0", "early1", "late"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_restart_resumes_from_checkpoint(harness: Harness, transport: str, tmp_path: Path) -> None:
    settings = make_settings(transport, checkpoint_dir=tmp_path / "ckpt", client_timeout_s=30.0)
    srv = harness.server(settings)
    harness.client(srv, "a", 0, transport=transport)
    harness.client(srv, "b", 1, transport=transport)
    wait_until(lambda: srv.federation.status().ready == 2, what="2 ready clients")
    srv.federation.start_autorun(4)
    assert srv.federation.wait_for_round(2, 60)
    srv.federation.stop_autorun()
    wait_until(lambda: srv.federation.status().current_round is None, what="open round to finish")
    stopped_at = srv.federation.round
    saved = srv.federation.global_state
    # Same ports, same checkpoint: the clients reconnect with back-off and their old tokens.
    restarted = harness.restart(srv, settings)
    fed = restarted.federation
    assert fed.round == stopped_at and len(fed.history()) == stopped_at
    assert all(torch.equal(saved[k], v) for k, v in fed.global_state.items())
    wait_until(lambda: fed.status().ready == 2, 60, "clients to come back")
    fed.start_autorun(1)
    assert fed.wait_for_round(stopped_at + 1, 60)
    last = fed.history()[-1]
    assert last.round == stopped_at + 1 and _names(last) == ["a", "b"]


@pytest.mark.parametrize("transport", NETWORK_TRANSPORTS)
def test_update_lost_by_a_restart_is_trained_again(harness: Harness, transport: str, tmp_path: Path) -> None:
    """Client a's round-2 update is accepted, then the server stops before round 2 closes: the
    restarted server resumes at round 1 and opens round 2 again, and a must train it again
    (it used to ignore a round it had already sent, and round 2 never closed)."""
    from fedcore.loops import train

    release = threading.Event()
    calls = {"n": 0}

    def held_in_round_two(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            release.wait(60)  # b trains round 2 only after the restart
        return train(*a, **kw)

    settings = make_settings(transport, checkpoint_dir=tmp_path / "ckpt", client_timeout_s=60.0)
    srv = harness.server(settings)
    a = harness.client(srv, "a", 0, transport=transport)
    harness.client(srv, "b", 1, transport=transport, train_fn=held_in_round_two)
    wait_until(lambda: srv.federation.status().ready == 2, what="2 ready clients")
    srv.federation.start_autorun(2)
    wait_until(lambda: 2 in a.client.summary.rounds, 60, "a to send round 2")
    assert srv.federation.round == 1
    restarted = harness.restart(srv, settings)
    fed = restarted.federation
    assert fed.round == 1
    wait_until(lambda: fed.status().num_clients == 2, 60, "clients to come back")
    fed.autorun_to(2)
    release.set()
    assert fed.wait_for_round(2, 60), "round 2 never closed: a did not train it again"
    assert _names(fed.history()[-1]) == ["a", "b"]
    assert a.client.summary.retrained_rounds == [2]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_input_is_refused_and_server_survives(harness: Harness, transport: str) -> None:
    settings = make_settings(transport, min_clients=1, max_payload_bytes=64 * 1024, admin_token="admin-secret")
    srv = harness.server(settings)
    fed = srv.federation
    spec = get_transport(transport)
    cs = srv.client_settings().model_copy(update={"admin_token": None})  # a client does not know it
    t = spec.client(cs.address_for(transport), cs)
    try:
        reg = t.register("probe", 100)
        initial = t.fetch_global().payload
        t.signal(ClientState.READY)
        with pytest.raises(AuthError):
            t.start_autorun(1)  # no admin token
        with pytest.raises(AuthError):
            t.start_autorun(1, admin_token=reg.token)  # a client token cannot control rounds
        t.start_autorun(1, admin_token="admin-secret")
        wait_until(lambda: fed.status().current_round == 1, what="round 1")
        assert t.signal(ClientState.READY).action is Action.TRAIN
        before = {k: v.clone() for k, v in fed.global_state.items()}
        with pytest.raises(PayloadError):
            t.push_update(1, b"\x00garbage" * 10, 100, {})
        with pytest.raises(PayloadError):
            t.push_update(1, initial[: len(initial) // 2], 100, {})
        bad = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in before.items()}
        with pytest.raises(PayloadError):
            t.push_update(1, wire.encode_state(bad), 100, {})
        with pytest.raises(PayloadTooLargeError):
            t.push_update(1, bytes(200 * 1024), 100, {})
        with pytest.raises(RoundStateError):
            t.push_update(7, initial, 100, {})
        good_token = t.token
        t.token = "forged"
        with pytest.raises(AuthError):
            t.fetch_global()
        t.token = good_token
        real_id, t.client_id = t.client_id, "not-a-client"
        with pytest.raises((UnknownClientError, AuthError)):
            t.fetch_global()
        t.client_id = real_id
        assert all(torch.equal(before[k], v) for k, v in fed.global_state.items())
        # still serving: a good update closes the round
        t.push_update(1, initial, 100, {"loss": 0.5})
        assert fed.wait_for_round(1, 30)
        assert t.status().round == 1
    finally:
        t.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_block_framed_rounds(harness: Harness, transport: str) -> None:
    """framing = "blocks": the global is served block-framed and decoded as it downloads, and
    updates are encoded while they are sent (no declared size) and decoded as they arrive."""
    srv = harness.server(make_settings(transport, min_clients=2, framing="blocks"), stop_when_done=True)
    fed = srv.federation
    cs = [harness.client(srv, f"c{i}", i, transport=transport) for i in range(2)]
    wait_until(lambda: fed.status().ready == 2, what="2 ready clients")
    fed.start_autorun(2)
    assert fed.wait_for_round(2, 60)
    assert isinstance(wire.payload_info(fed._model.payload), wire.FramedWireHeader)
    hist = fed.history()
    assert [_names(h) for h in hist] == [["c0", "c1"]] * 2 and all(not h.refused for h in hist)
    for c in cs:
        c.thread.join(20)
        assert c.error is None and c.result.rounds == [1, 2] and c.result.bytes_sent > 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_block_streams_are_refused_and_server_survives(harness: Harness, transport: str) -> None:
    srv = harness.server(make_settings(transport, min_clients=1, framing="blocks"))
    fed = srv.federation
    spec = get_transport(transport)
    cs = srv.client_settings()
    t = spec.client(cs.address_for(transport), cs)
    try:
        reg = t.register("probe", 100)
        assert reg.wire is not None and reg.wire.framing == "blocks"
        dec = wire.StreamDecoder(expected=wire.spec_of(fed.global_state))
        served = t.fetch_global(sink=dec.feed).payload
        state = dec.finish()
        assert isinstance(wire.payload_info(served), wire.FramedWireHeader)
        t.signal(ClientState.READY)
        fed.start_autorun(1)
        wait_until(lambda: fed.status().current_round == 1, what="round 1")
        assert t.signal(ClientState.READY).action is Action.TRAIN
        before = {k: v.clone() for k, v in fed.global_state.items()}
        w = reg.wire
        good = list(wire.iter_encode_state(state, dtype=w.dtype, codec=w.codec, level=w.level, filter=w.filter,
                                           block=wire.MIN_BLOCK))
        assert len(good) >= 2
        corrupt = [*good[:-1], good[-1][:-5] + bytes(b ^ 0x55 for b in good[-1][-5:])]
        with pytest.raises(PayloadError, match="truncated"):
            t.push_update(1, good[:-1], 100, {})
        with pytest.raises(PayloadError, match="checksum|decode"):
            t.push_update(1, corrupt, 100, {})
        with pytest.raises(PayloadError, match="trailing"):
            t.push_update(1, [*good, b"\0" * 3], 100, {})
        assert all(torch.equal(before[k], v) for k, v in fed.global_state.items())
        t.push_update(1, iter(good), 100, {})  # a one-shot stream, as an encoder yields it
        assert fed.wait_for_round(1, 30)
        refused = fed.history()[0].refused
        assert len(refused) == 3 and all(r.client == "probe" for r in refused)
    finally:
        t.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_disconnect_and_status(harness: Harness, transport: str) -> None:
    srv = harness.server(make_settings(transport))
    spec = get_transport(transport)
    cs = srv.client_settings()
    t = spec.client(cs.address_for(transport), cs)
    try:
        reg = t.register("x", 5)
        assert srv.federation.status().num_clients == 1
        t.disconnect()
        assert {c.client_id: c.state for c in srv.federation.clients()}[reg.client_id] == "left"
        assert srv.federation.status().num_clients == 0
    finally:
        t.close()


def test_admin_asks_a_running_client_to_switch_transport(harness: Harness) -> None:
    import httpx

    srv = harness.server(make_settings("rest,grpc", admin_token="adm"))
    fed = srv.federation
    a = harness.client(srv, "a", 0, transport="rest")
    harness.client(srv, "b", 1, transport="grpc")
    wait_until(lambda: fed.status().ready == 2, what="2 ready clients")
    url = srv.client_settings().rest_url
    a_id = {c.name: c.client_id for c in fed.clients()}["a"]
    denied = httpx.post(f"{url}/client/{a_id}/transport/grpc")
    assert denied.status_code == 401
    ok = httpx.post(f"{url}/client/{a_id}/transport/grpc", headers={"Authorization": "Bearer adm"})
    assert ok.status_code == 200, ok.text
    fed.start_autorun(2)
    assert fed.wait_for_round(2, 60)
    assert {c.name: c.transport for c in fed.clients()} == {"a": "grpc", "b": "grpc"}
    assert [sorted(h.participants) for h in fed.history()] == [["a", "b"], ["a", "b"]]
    # the client records its round after the server accepted the update, so a round can close
    # (and wait_for_round return) before the client thread has written its summary
    wait_until(lambda: len(a.client.summary.transports) == 2, what="a's summary of both rounds")
    assert a.client.summary.transports == ["grpc", "grpc"]
