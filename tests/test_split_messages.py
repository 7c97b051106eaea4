"""Split messages: exact round trip, bf16 option, and every malformed message refused by the
edge before it touches any state."""
from __future__ import annotations

import math

import pytest
import torch

from fedcore import wire
from fedcore.errors import PayloadError, PayloadTooLargeError
from fedcore.split import EdgeConfig, EdgeTrainer, Expect, MicroMeta, SplitMessage, decode_message, encode_message
from fedcore.split.messages import LABELS, TENSOR_NAME

FEAT = (5, 8)
META = MicroMeta(round=1, epoch=0, step=3, micro=1, num_micro=4, size=6, mini_size=24)
EXPECT = Expect(shapes={"forward": FEAT}, max_batch=8, labels_with=("forward",), num_classes=10, max_bytes=1 << 20)


def _fwd(act: torch.Tensor | None = None, labels: torch.Tensor | None = None, meta: MicroMeta = META) -> SplitMessage:
    g = torch.Generator().manual_seed(0)
    act = torch.randn(meta.size, *FEAT, generator=g) if act is None else act
    labels = torch.randint(0, 10, (meta.size,), generator=g) if labels is None else labels
    return SplitMessage("forward", meta, act, labels=labels)


def test_round_trip_is_exact_in_fp32() -> None:
    msg = _fwd()
    got = decode_message(encode_message(msg), EXPECT)
    assert got.kind == "forward" and got.meta == META
    assert torch.equal(got.tensor, msg.tensor) and got.tensor.dtype == torch.float32
    assert got.labels is not None and msg.labels is not None and torch.equal(got.labels, msg.labels)


def test_bf16_with_codec_is_smaller_and_close() -> None:
    msg = _fwd(torch.randn(6, *FEAT).relu())
    exact, small = encode_message(msg), encode_message(msg, dtype="bf16", codec="zstd")
    assert len(small) < 0.6 * len(exact)
    got = decode_message(small, EXPECT)
    assert got.tensor.dtype == torch.float32 and torch.allclose(got.tensor, msg.tensor, rtol=1e-2, atol=1e-2)
    assert got.labels is not None and msg.labels is not None
    assert torch.equal(got.labels, msg.labels)  # labels always exact


def test_reply_must_answer_the_right_micro_batch() -> None:
    reply = SplitMessage("grad", META, torch.randn(6, *FEAT), loss=1.5, correct=2)
    data = encode_message(reply)
    got = decode_message(data, Expect(shapes={"grad": FEAT}, max_batch=24, reply_to=META))
    assert got.loss == 1.5 and got.correct == 2
    other = MicroMeta(**{**vars(META), "micro": 2})
    with pytest.raises(PayloadError, match="reply is for"):
        decode_message(data, Expect(shapes={"grad": FEAT}, max_batch=24, reply_to=other))


def _raw(state: dict[str, torch.Tensor], **meta: object) -> bytes:
    return wire.encode_state(state, dtype="fp32", codec="none", meta={"split": "forward", **vars(META), **meta})


def _bad_messages() -> dict[str, tuple[bytes, str]]:
    good = encode_message(_fwd())
    act, labels = _fwd().tensor, _fwd().labels
    assert labels is not None
    nan, inf = act.clone(), act.clone()
    nan[2, 1, 3] = math.nan
    inf[0, 0, 0] = -math.inf
    return {
        "shape": (encode_message(_fwd(torch.randn(6, 5, 9))), "expects float32"),
        "batch beyond meta": (_raw({"activations": torch.randn(7, *FEAT), LABELS: torch.zeros(7, dtype=torch.long)}), "expects"),
        "dtype float64": (_raw({"activations": act.double(), LABELS: labels}), "float64"),
        "labels as float": (_raw({"activations": act, LABELS: labels.float()}), "labels"),
        "nan": (encode_message(_fwd(nan)), "NaN"),
        "inf": (encode_message(_fwd(inf)), "NaN or Inf"),
        "truncated": (good[:-7], "truncated"),
        "trailing": (good + b"\0", "trailing"),
        "not a payload": (b"GET / HTTP/1.1\r\n\r\n", "not a fedcore payload"),
        "oversize": (good + bytes(1 << 20), "over the"),
        "batch over limit": (encode_message(_fwd(meta=MicroMeta(1, 0, 3, 0, 1, 9, 9))), "size=9"),
        "labels out of range": (encode_message(_fwd(labels=torch.full((6,), 10))), "outside"),
        "no labels": (_raw({"activations": act}), "missing"),
        "wrong kind": (encode_message(SplitMessage("grad", META, act)), "not one of"),
        "micro out of range": (_raw({"activations": act, LABELS: labels}, micro=4), "micro=4"),
        "meta not int": (_raw({"activations": act, LABELS: labels}, step="3"), "step='3'"),
        "update payload": (wire.encode_state({"activations": act, LABELS: labels}, quantize_update=True,
                                             reference={"activations": act, LABELS: labels},
                                             meta={"split": "forward", **vars(META)}), "not parameter updates"),
    }


@pytest.mark.parametrize("case", list(_bad_messages()))
def test_bad_messages_refused(case: str) -> None:
    data, match = _bad_messages()[case]
    with pytest.raises(PayloadError, match=match):
        decode_message(data, EXPECT)


def test_oversize_is_its_own_error_type() -> None:
    data, _ = _bad_messages()["oversize"]
    with pytest.raises(PayloadTooLargeError):
        decode_message(data, EXPECT)


def test_edge_refuses_bad_messages_without_state_change() -> None:
    edge_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    before = {k: v.clone() for k, v in edge_model.state_dict().items()}
    cfg = EdgeConfig(cut_shape=FEAT, max_micro_batch=8, num_classes=10, max_message_bytes=1 << 20)
    with EdgeTrainer(edge_model, cfg) as edge:
        for data, _ in _bad_messages().values():
            with pytest.raises(PayloadError):
                edge.handle("c", data)
        assert edge.open_micro_batches("c") == 0 and edge.optimizer_steps == 0
        # inconsistent coordinates across the micro-batches of one mini-batch
        edge.handle("c", encode_message(_fwd()))
        with pytest.raises(PayloadError, match="earlier ones said"):
            edge.handle("c", encode_message(_fwd(meta=MicroMeta(1, 0, 3, 2, 3, 6, 24))))
        assert edge.open_micro_batches("c") == 1
    assert all(torch.equal(before[k], v) for k, v in edge_model.state_dict().items())


def test_u_shaped_edge_refuses_labels_and_stray_backwards() -> None:
    edge_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 3))
    cfg = EdgeConfig(cut_shape=FEAT, max_micro_batch=8, u_shaped=True, edge_out_shape=(3,))
    with EdgeTrainer(edge_model, cfg) as edge:
        with pytest.raises(PayloadError, match="unexpected"):
            edge.handle("c", encode_message(_fwd()))
        stray = SplitMessage("backward", META, torch.randn(6, 3))
        with pytest.raises(PayloadError, match="has not seen"):
            edge.handle("c", encode_message(stray))
        out = decode_message(edge.handle("c", encode_message(SplitMessage("forward", META, _fwd().tensor))),
                             Expect(shapes={"output": (3,)}, max_batch=24, reply_to=META))
        assert out.kind == "output" and out.tensor.shape == (6, 3)
        with pytest.raises(PayloadError, match="expects float32\\[6, 3\\]"):
            edge.handle("c", encode_message(SplitMessage("backward", META, torch.randn(6, 4))))
        grad = decode_message(edge.handle("c", encode_message(SplitMessage("backward", META, torch.randn(6, 3)))),
                              Expect(shapes={"grad": FEAT}, max_batch=24, reply_to=META))
        assert grad.tensor.shape == (6, *FEAT)
        assert TENSOR_NAME["backward"] == "output_grad"
