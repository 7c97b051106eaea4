"""Split training end to end over every transport (issue 12): devices train the front of the
model, the server's edge the rest, through the same operations, tokens, limits and errors."""
from __future__ import annotations

import signal

import pytest
import torch

from conftest import NETWORK_TRANSPORTS, TRANSPORTS, Harness, make_settings, wait_until
from fedcore.app.models import build_model
from fedcore.errors import AuthError, PayloadError, RoundStateError
from fedcore.loops import train
from fedcore.states import Action, ClientState
from fedcore.transport import get_transport

pytestmark = pytest.mark.timeout(240)
SPLIT = {"mode": "split", "split_at": "1", "dtype": "fp32", "micro_batches": 2, "split_window": 2,
         "batch_size": 16, "lr": 0.05, "local_epochs": 1}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_split_rounds_with_two_devices(harness: Harness, transport: str) -> None:
    srv = harness.server(make_settings(transport, **SPLIT), stop_when_done=True)
    fed = srv.federation
    cs = [harness.client(srv, f"d{i}", i, transport=transport) for i in range(2)]
    wait_until(lambda: fed.status().ready == 2, what="2 ready devices")
    fed.start_autorun(2)
    assert fed.wait_for_round(2, 120)
    hist = fed.history()
    assert [sorted(h.participants) for h in hist] == [["d0", "d1"]] * 2
    assert hist[-1].accuracy is not None and hist[-1].accuracy > 0.5
    for c in cs:
        c.thread.join(30)
        assert c.error is None, c.error
        assert c.client.summary.rounds == [1, 2]
        m = c.client.summary.metrics[-1]
        assert m["split_bytes_up"] > 0 and m["split_bytes_down"] > 0
    # the split traffic is counted in the round's bytes, beside the device-side parameters
    assert hist[0].bytes_in >= sum(c.client.summary.metrics[0]["split_bytes_up"] for c in cs)


@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_device_split_equals_centralised_training(harness: Harness, transport: str, window: int) -> None:
    """fp32, lossless wire: one device + the edge compute exactly the uncut model's SGD steps,
    with and without overlap (GPipe: one step per mini-batch whatever the micro-batching)."""
    settings = make_settings(transport, min_clients=1, **(SPLIT | {"split_window": window, "micro_batches": 4}))
    srv = harness.server(settings, stop_when_done=True)
    fed = srv.federation
    c = harness.client(srv, "solo", 0, transport=transport)
    wait_until(lambda: fed.status().ready == 1, what="the device")
    fed.start_autorun(1)
    assert fed.wait_for_round(1, 120)
    c.thread.join(30)
    assert c.error is None, c.error

    # The same model, batches and optimizer, trained centrally.
    reference = build_model("digits_mlp", seed=settings.seed)
    train(reference, harness.data.clients[0].train, epochs=1, batch_size=16, lr=0.05, seed=c.client.round_seed(1))
    trained = {**fed.global_state, **fed.edge.edge_state()}  # the device side and the edge side
    assert set(trained) == set(reference.state_dict())
    for name, value in reference.state_dict().items():
        assert torch.allclose(trained[name].float(), value, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_split_messages_are_refused_and_the_edge_keeps_serving(harness: Harness, transport: str) -> None:
    srv = harness.server(make_settings(transport, **(SPLIT | {"min_clients": 1})))
    fed = srv.federation
    cs = srv.client_settings()
    t = get_transport(transport).client(cs.address_for(transport), cs)
    try:
        t.register("probe", 10)
        t.signal(ClientState.READY)
        with pytest.raises(RoundStateError):  # no round open
            t.open_split_channel(1, 2).submit(b"x").result(10)
        fed.start_autorun(1)
        wait_until(lambda: fed.status().current_round == 1, what="round 1")
        assert t.signal(ClientState.READY).action is Action.TRAIN
        ch = t.open_split_channel(1, 2)
        with pytest.raises(PayloadError):
            ch.submit(b"\x00garbage").result(10)
        good_token, t.token = t.token, "forged"
        with pytest.raises(AuthError):
            t.open_split_channel(1, 2).submit(b"x").result(10)
        t.token = good_token
        ch.close()
        assert fed.edge is not None and fed.edge.optimizer_steps == 0
    finally:
        t.close()


@pytest.mark.parametrize("transport", NETWORK_TRANSPORTS)
def test_device_killed_mid_epoch_leaves_the_edge_consistent(harness: Harness, transport: str) -> None:
    settings = make_settings(transport, min_clients=2, client_timeout_s=2.0, **SPLIT)
    srv = harness.server(settings)
    fed = srv.federation
    harness.client(srv, "steady", 0, transport=transport)
    victim = harness.client_process(srv, "victim", 1, transport=transport,
                                    extra=["--set", "mode=split", "--set", "split_at=1", "--set", "micro_batches=2",
                                           "--set", "split_window=2", "--set", "local_epochs=10000",
                                           "--set", "dtype=fp32"])
    wait_until(lambda: fed.status().ready == 2, 90, "2 ready devices (one is a process)")
    fed.start_autorun(1)
    wait_until(lambda: fed.edge is not None and fed.edge.optimizer_steps > 3, 60, "the victim to be mid-epoch")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert fed.wait_for_round(1, 60), "the round did not complete without the killed device"
    h = fed.history()[0]
    assert list(h.participants) == ["steady"] and h.dropped == ("victim",)
    victim_id = {c.name: c.client_id for c in fed.clients()}["victim"]
    assert fed.edge.open_micro_batches(victim_id) == 0  # its half mini-batch never stepped the edge


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_late_device_takes_part_from_the_next_round(harness: Harness, transport: str) -> None:
    # Round 1 is long (the server's config says 15 epochs), so the late device joins while it runs.
    srv = harness.server(make_settings(transport, **SPLIT), fit_config_fn=lambda rnd: {"epochs": 15 if rnd == 1 else 1})
    fed = srv.federation
    harness.client(srv, "early0", 0, transport=transport)
    harness.client(srv, "early1", 1, transport=transport)
    wait_until(lambda: fed.status().ready == 2, what="2 ready devices")
    fed.start_autorun(2)
    wait_until(lambda: fed.status().current_round == 1, what="round 1 to start")
    harness.client(srv, "late", 2, transport=transport)
    wait_until(lambda: any(c.name == "late" for c in fed.clients()), what="the late device to register")
    assert fed.status().current_round == 1, "round 1 ended before the late device joined"
    assert fed.wait_for_round(2, 120)
    hist = fed.history()
    assert sorted(hist[0].participants) == ["early0", "early1"]
    assert sorted(hist[1].participants) == ["early0", "early1", "late"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_restarted_edge_resumes_both_halves(harness: Harness, transport: str, tmp_path) -> None:
    """The device half (global model) and the edge half (edge.fcw) come back after a restart;
    the devices reconnect with their old tokens and train the next round against the same edge."""
    settings = make_settings(transport, checkpoint_dir=tmp_path / "ckpt", client_timeout_s=30.0, **SPLIT)
    srv = harness.server(settings)
    harness.client(srv, "a", 0, transport=transport)
    harness.client(srv, "b", 1, transport=transport)
    wait_until(lambda: srv.federation.status().ready == 2, what="2 ready devices")
    srv.federation.start_autorun(1)
    assert srv.federation.wait_for_round(1, 120)
    wait_until(lambda: srv.federation.status().current_round is None, what="round 1 to close")
    device_half, edge_half = srv.federation.global_state, srv.federation.edge.edge_state()
    restarted = harness.restart(srv, settings)
    fed = restarted.federation
    assert fed.round == 1
    assert all(torch.equal(device_half[k], v) for k, v in fed.global_state.items())
    assert all(torch.equal(edge_half[k], v) for k, v in fed.edge.edge_state().items())
    wait_until(lambda: fed.status().ready == 2, 60, "the devices to come back")
    fed.start_autorun(1)
    assert fed.wait_for_round(2, 120)
    assert sorted(fed.history()[-1].participants) == ["a", "b"]
