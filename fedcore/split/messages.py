"""Micro-batch messages of split training, in fedcore's wire format.

Each message is one ``fedcore.wire`` payload: a tiny state-dict (the tensor crossing the cut,
and the labels where they travel) with the micro-batch's coordinates in the header's ``meta``.
float32 is exact by default; ``dtype="bf16"`` and a codec shrink activations on slow links.
Decoding trusts nothing from the peer: sizes, shapes, dtypes and counts are checked against
what the receiver expects before any tensor is materialised, and NaN/Inf is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

import torch

from fedcore import wire
from fedcore.arrays import torch_state
from fedcore.errors import PayloadError, PayloadTooLargeError

Kind = Literal["forward", "backward", "grad", "output"]
KINDS: tuple[Kind, ...] = get_args(Kind)
# The tensor each kind carries: activations up, their gradient down; in a U-shaped split also
# the edge's output down and that output's gradient up.
TENSOR_NAME: dict[Kind, str] = {
    "forward": "activations",
    "grad": "activation_grad",
    "output": "output",
    "backward": "output_grad",
}
LABELS = "labels"
MAX_MICRO_BATCHES = 4096
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class MicroMeta:
    """Where a micro-batch sits: ``step`` is the mini-batch index within the epoch, ``micro``
    its index within the mini-batch, ``size`` its samples, ``mini_size`` the mini-batch's."""

    round: int
    epoch: int
    step: int
    micro: int
    num_micro: int
    size: int
    mini_size: int


@dataclass(frozen=True)
class SplitMessage:
    """One decoded message. ``loss``/``correct`` ride on the edge's ``grad`` replies (the mean
    loss of the micro-batch and its number of correct predictions)."""

    kind: Kind
    meta: MicroMeta
    tensor: torch.Tensor
    labels: torch.Tensor | None = None
    loss: float | None = None
    correct: int | None = None


@dataclass(frozen=True)
class Expect:
    """What a receiver accepts: per message kind, the per-sample shape of its tensor; the
    largest micro-batch; which kinds must carry labels (all others must not), their class
    count; the byte limit; and, for a reply, the exact ``meta`` it answers."""

    shapes: Mapping[Kind, tuple[int, ...]]
    max_batch: int
    labels_with: tuple[Kind, ...] = ()
    num_classes: int | None = None
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    reply_to: MicroMeta | None = None


def encode_message(msg: SplitMessage, *, dtype: str = "fp32", codec: str = "none",
                   level: int | None = None) -> bytes:
    """Bytes for ``msg``: float tensors as ``dtype`` on the wire, labels exact."""
    state = {TENSOR_NAME[msg.kind]: msg.tensor.detach().to("cpu", torch.float32)}
    if msg.labels is not None:
        state[LABELS] = msg.labels.detach().to("cpu", torch.int64)
    meta: dict[str, Any] = {"split": msg.kind, **vars(msg.meta)}
    if msg.loss is not None:
        meta["loss"] = float(msg.loss)
    if msg.correct is not None:
        meta["correct"] = int(msg.correct)
    return wire.encode_state(state, dtype=dtype, codec=codec, level=level, filter="auto", meta=meta)


def _int(meta: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = meta.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise PayloadError(f"message meta {key}={v!r} is not an integer in [{lo}, {hi}]")
    return v


def _meta(raw: Any, expect: Expect) -> tuple[Kind, MicroMeta, float | None, int | None]:
    if not isinstance(raw, dict):
        raise PayloadError("message has no meta")
    kind = raw.get("split")
    if not isinstance(kind, str) or kind not in expect.shapes:
        raise PayloadError(f"message kind {kind!r} is not one of {sorted(expect.shapes)} expected here")
    big = 2**62
    num_micro = _int(raw, "num_micro", 1, MAX_MICRO_BATCHES)
    size = _int(raw, "size", 1, expect.max_batch)
    meta = MicroMeta(
        round=_int(raw, "round", 0, big),
        epoch=_int(raw, "epoch", 0, big),
        step=_int(raw, "step", 0, big),
        micro=_int(raw, "micro", 0, num_micro - 1),
        num_micro=num_micro,
        size=size,
        mini_size=_int(raw, "mini_size", size, expect.max_batch * num_micro),
    )
    if expect.reply_to is not None and meta != expect.reply_to:
        raise PayloadError(f"reply is for {meta}, expected one for {expect.reply_to}")
    loss = raw.get("loss")
    if loss is not None and (not isinstance(loss, (int, float)) or not math.isfinite(loss)):
        raise PayloadError(f"message loss {loss!r} is not a finite number")
    correct = raw.get("correct")
    if correct is not None:
        correct = _int(raw, "correct", 0, size)
    return cast(Kind, kind), meta, None if loss is None else float(loss), correct


def _check_tensors(header: dict[str, Any], spec: Mapping[str, wire.TensorSpec]) -> None:
    """Names, shapes and dtypes from the header against what the receiver expects, before
    the payload's declared sizes are looked at."""
    got = {t["name"]: (list(t["shape"]), t["dtype"]) for t in header["tensors"]}
    missing, extra = sorted(set(spec) - set(got)), sorted(set(got) - set(spec))
    if missing or extra:
        raise PayloadError(f"message tensors: missing {missing}, unexpected {extra}")
    for name, want in spec.items():
        shape, dtype = got[name]
        if shape != list(want.shape) or dtype != want.dtype:
            raise PayloadError(f"{name} is {dtype}{shape}; the receiver expects {want.dtype}{list(want.shape)}")


def decode_message(data: bytes | memoryview, expect: Expect) -> SplitMessage:
    """Decode and check one message; raises :class:`PayloadError` (or
    :class:`PayloadTooLargeError`) for anything the receiver did not ask for."""
    if len(data) > expect.max_bytes:
        raise PayloadTooLargeError(f"message of {len(data)} bytes is over the {expect.max_bytes}-byte limit")
    parsed, _ = wire.read_header(data)
    header = parsed.model_dump()  # the checked header, as the JSON it came from
    if header["kind"] != "weights":
        raise PayloadError("split messages carry tensors, not parameter updates")
    kind, meta, loss, correct = _meta(header.get("meta"), expect)
    name = TENSOR_NAME[kind]
    spec = {name: wire.TensorSpec((meta.size, *expect.shapes[kind]), "float32")}
    if kind in expect.labels_with:
        spec[LABELS] = wire.TensorSpec((meta.size,), "int64")
    wires = {t["name"]: t.get("wire") for t in header["tensors"]}
    if wires.get(name, "float32") not in wire.CAST_DTYPES:
        raise PayloadError(f"tensor {name!r} travels as {wires.get(name)!r}, not a float wire dtype")
    _check_tensors(header, spec)
    limit = sum(4 * math.prod(s.shape) if s.dtype == "float32" else 8 * math.prod(s.shape) for s in spec.values())
    state = torch_state(wire.decode_state(data, max_size=limit, expected=spec))
    tensor = state[name]
    if not bool(torch.isfinite(tensor).all()):
        raise PayloadError(f"{name} of step {meta.step} micro {meta.micro} hold NaN or Inf")
    labels = state.get(LABELS)
    if labels is not None and expect.num_classes is not None and meta.size > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= expect.num_classes:
            raise PayloadError(f"labels in [{lo}, {hi}] are outside [0, {expect.num_classes})")
    return SplitMessage(kind=kind, meta=meta, tensor=tensor, labels=labels, loss=loss, correct=correct)
