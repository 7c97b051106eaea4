"""The upload gate bounds how many bodies are *decoded* at once (each builds a model-sized
state), not how many are *received*: a body that arrives while every decode slot is taken is
spooled (memory, then a temporary file) and decoded when a slot frees. Holding it back instead
serialised the transfers, so on slow links N uploads took ceil(N / slots) times one."""
from __future__ import annotations

import tempfile
from contextlib import AbstractContextManager
from typing import Any

import pytest
import torch

from conftest import FakeClock
from fedcore import wire
from fedcore.errors import PayloadError, TransportError
from fedcore.federation import Federation, FederationConfig
from fedcore.operations import Caller, UpdateSink, WireOptions
from fedcore.states import ClientState
from fedcore.uploads import SPOOL_MEMORY_BYTES

DIM = 600_000  # 2.4 MB as fp32: past the in-memory part of the spool


def _fed(**kw: Any) -> Federation:
    cfg = FederationConfig(wire=WireOptions("fp32", "zstd", None, "auto"), max_concurrent_updates=1,
                           max_update_norm=None, **kw)
    return Federation({"w": torch.zeros(DIM)}, cfg, clock=FakeClock())


def _join(fed: Federation, name: str) -> Caller:
    reg = fed.register(Caller(peer="test"), name, 10, "test")
    me = Caller(reg.token, reg.client_id)
    fed.signal(me, ClientState.READY, 0)
    return me


def _payload(value: float, framing: str = "blocks") -> bytes:
    return wire.encode_state({"w": torch.full((DIM,), value)}, dtype="fp32", codec="none",
                             framed=framing == "blocks", block=1 << 16)


def _open(fed: Federation, who: Caller, size: int) -> tuple[AbstractContextManager[UpdateSink], UpdateSink]:
    ctx = fed.accept_update(who, 1, size, 10)
    return ctx, ctx.__enter__()


@pytest.mark.parametrize("framing", ["blocks", "whole"])
def test_a_body_waiting_for_a_decode_slot_is_received_then_decoded(framing: str) -> None:
    fed = _fed(body_timeout_s=5.0)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    fed.tick()
    pa, pb = _payload(1.0, framing), _payload(3.0, framing)
    assert len(pb) > SPOOL_MEMORY_BYTES
    ctx_a, sink_a = _open(fed, a, len(pa))
    sink_a.write(pa[: len(pa) // 2])  # a holds the only decode slot
    ctx_b, sink_b = _open(fed, b, len(pb))
    for i in range(0, len(pb), 1 << 16):  # b's whole body arrives meanwhile: nothing blocks
        sink_b.write(pb[i : i + (1 << 16)])
    assert sink_b._spool is not None and sink_b._spool._rolled  # type: ignore[attr-defined]  # on disk
    sink_a.write(pa[len(pa) // 2 :])
    ctx_a.__exit__(None, None, None)
    ctx_b.__exit__(None, None, None)  # b takes the freed slot, replays its spool, is decoded
    assert fed.status().submitted == 2
    fed.tick()
    assert fed.round == 1
    assert torch.allclose(fed.global_state["w"], torch.full((DIM,), 2.0))


def test_a_corrupt_spooled_body_is_refused_when_replayed_and_frees_its_slot() -> None:
    fed = _fed(body_timeout_s=5.0)
    a, b, c = _join(fed, "a"), _join(fed, "b"), _join(fed, "c")
    fed.start_autorun(1)
    fed.tick()
    pa, pc = _payload(1.0), _payload(2.0)
    bad = bytearray(_payload(3.0))
    bad[len(bad) // 2] ^= 0xFF  # inside a block: its crc32 no longer matches
    ctx_a, sink_a = _open(fed, a, len(pa))
    sink_a.write(pa[:100])
    ctx_b, sink_b = _open(fed, b, len(bad))
    sink_b.write(bytes(bad))  # spooled: nobody has looked at it yet
    sink_a.write(pa[100:])
    ctx_a.__exit__(None, None, None)
    with pytest.raises(PayloadError):
        ctx_b.__exit__(None, None, None)
    fed.submit_update(c, 1, pc, 10)  # b's slot was given back
    fed.submit_update(b, 1, _payload(3.0), 10)  # and b may send a good one
    assert fed.status().submitted == 3
    fed.tick()
    assert [r.client for r in fed.history()[-1].refused] == ["b"]
    assert torch.allclose(fed.global_state["w"], torch.full((DIM,), 2.0))


def test_without_a_spool_a_body_waits_for_a_slot_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_disk(*_: Any, **__: Any) -> Any:
        raise OSError("read-only file system")

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", no_disk)
    fed = _fed(body_timeout_s=0.3)
    a, b = _join(fed, "a"), _join(fed, "b")
    fed.start_autorun(1)
    fed.tick()
    pa, pb = _payload(1.0), _payload(3.0)
    ctx_a, sink_a = _open(fed, a, len(pa))
    sink_a.write(pa[:100])
    ctx_b, sink_b = _open(fed, b, len(pb))
    with pytest.raises(TransportError, match="server busy"):
        sink_b.write(pb)  # nowhere to spool: it waited for the slot a holds, as before
    err = TransportError("connection lost")
    for ctx in (ctx_b, ctx_a):  # both bodies end (the error is not swallowed); every slot is given back
        assert not ctx.__exit__(TransportError, err, None)
    fed.submit_update(b, 1, pb, 10)
    assert fed.status().submitted == 1


def test_the_int8_reference_is_decoded_once_however_many_uploads_open_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every upload of a round opens its decoder at once now; each used to decode its own copy
    of the reference an int8 update is relative to (10 clients: +380 MB of server RSS)."""
    import threading
    import time

    from fedcore import global_model

    calls = []
    real = wire.decode_state

    def slow_decode(*a: Any, **k: Any) -> Any:
        calls.append(1)
        time.sleep(0.05)  # wide enough for every thread to arrive while the first decodes
        return real(*a, **k)

    monkeypatch.setattr(global_model.wire, "decode_state", slow_decode)
    model = global_model.GlobalModel({"w": torch.zeros(10)}, WireOptions("bf16", "zstd", None, "auto", "q8"),
                                     1 << 20, None)
    model.encode()
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(model.reference())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(got) == 8 and all(g is got[0] for g in got)
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_server_decodes_an_int8_update_against_the_wire_dtype_reference(dtype: str) -> None:
    """The server keeps the int8 reference in the wire dtype (bf16: half the memory) and still
    decodes every update bit for bit as a float32 reference would."""
    from fedcore import global_model

    gen = torch.Generator().manual_seed(3)
    state = {"conv.weight": torch.randn(8, 4, 3, 3, generator=gen), "fc.bias": torch.randn(5, generator=gen),
             "bn.num_batches_tracked": torch.tensor(7)}
    model = global_model.GlobalModel(state, WireOptions(dtype, "zstd", None, "auto", "q8"), 1 << 24, None)
    model.encode()
    received = wire.decode_state(model.payload)  # what a client holds: float32
    local = {k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in received.items()}
    blob = wire.encode_state(local, dtype=dtype, reference=received, quantize_update=True)
    assert model.reference()["conv.weight"].dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
    got, want = model.decode_update(blob), wire.decode_state(blob, reference=received)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
