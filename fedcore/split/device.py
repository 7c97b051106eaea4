"""The device's side of split training: the front of the model (and, U-shaped, its head).

Each mini-batch is cut into M micro-batches that flow through a :class:`SplitChannel` in the
order of :func:`fedcore.split.schedule.plan`, at most W in flight, so sending micro i+1, the
edge computing micro i and the backward of micro i−1 overlap. Gradients are accumulated over
the micro-batches and the optimizer steps once per mini-batch (GPipe): any W and M compute
the same update as a plain loop over the uncut model.
"""
from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fedcore.errors import ConfigError, TransportError
from fedcore.loops import _batches
from fedcore.split.channel import SplitChannel
from fedcore.split.cut import SplitModel
from fedcore.split.edge import OptimizerFactory, sgd
from fedcore.split.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Expect,
    Kind,
    MicroMeta,
    SplitMessage,
    decode_message,
    encode_message,
)
from fedcore.split.schedule import BWD, FWD, HEAD, plan


@dataclass(frozen=True)
class DeviceConfig:
    """``micro_batches`` M per mini-batch, ``window`` W in flight (1 = sequential); wire
    ``dtype``/``codec`` of what the device sends; ``edge_out_shape`` (per sample) is needed
    for a U-shaped split, to check the edge's outputs."""

    micro_batches: int = 4
    window: int = 4
    dtype: str = "fp32"
    codec: str = "none"
    reply_timeout_s: float = 120.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    edge_out_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.micro_batches < 1 or self.window < 1:
            raise ConfigError("micro_batches and window must be >= 1")


@dataclass(frozen=True)
class StepResult:
    """One mini-batch: its mean loss, correct predictions, samples and bytes each way."""

    loss: float
    correct: int
    samples: int
    bytes_up: int
    bytes_down: int


@dataclass(frozen=True)
class EpochResult:
    loss: float
    accuracy: float
    samples: int
    steps: int
    bytes_up: int
    bytes_down: int
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    epochs: tuple[EpochResult, ...] = field(default_factory=tuple)

    @property
    def metrics(self) -> dict[str, float]:
        """The last epoch as ``fedcore.loops.train`` reports it (what a client sends upstream)."""
        last = self.epochs[-1]
        return {"train_loss": last.loss, "train_accuracy": last.accuracy}


@dataclass
class _Micro:
    meta: MicroMeta
    x: torch.Tensor
    y: torch.Tensor
    act: torch.Tensor | None = None
    future: Future[bytes] | None = None
    sent_kind: Kind = "forward"


class DeviceTrainer:
    """Trains ``split.device`` (and ``split.head``) against an edge reached through ``channel``."""

    def __init__(self, split: SplitModel, channel: SplitChannel, config: DeviceConfig | None = None, *,
                 optimizer: OptimizerFactory | None = None, loss_fn: nn.Module | None = None,
                 round: int = 0) -> None:
        self.split = split
        self.channel = channel
        self.config = config or DeviceConfig()
        if split.u_shaped and self.config.edge_out_shape is None:
            raise ConfigError("a U-shaped split needs DeviceConfig.edge_out_shape (see fedcore.split.probe_shapes)")
        params = [p for p in split.device_side.parameters() if p.requires_grad]
        self.optimizer = (optimizer or sgd())(params)
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.round = round
        self._bytes = [0, 0]

    def train(self, data: Dataset[Any], *, epochs: int = 1, batch_size: int = 32, seed: int = 0) -> TrainResult:
        """``epochs`` passes over ``data``, batches drawn as ``fedcore.loops.train`` draws them."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for epoch in range(epochs):
            t0, loss, correct, seen, steps = time.perf_counter(), 0.0, 0, 0, 0
            up0, down0 = self._bytes
            for step, (x, y) in enumerate(_batches(data, batch_size, True, gen)):
                r = self.train_step(x, y, epoch=epoch, step=step)
                loss += r.loss * r.samples
                correct += r.correct
                seen += r.samples
                steps += 1
            out.append(EpochResult(loss=loss / max(seen, 1), accuracy=correct / max(seen, 1), samples=seen,
                                   steps=steps, bytes_up=self._bytes[0] - up0, bytes_down=self._bytes[1] - down0,
                                   seconds=time.perf_counter() - t0))
        return TrainResult(tuple(out))

    def train_step(self, x: torch.Tensor, y: torch.Tensor, *, epoch: int, step: int) -> StepResult:
        """One mini-batch: pipelined micro-batches, then one optimizer step. On any error the
        accumulated gradients are discarded (no half step) and the error is raised."""
        for part in (self.split.device, self.split.head):
            if part is not None:
                part.train()
        xs = [t for t in torch.tensor_split(x, self.config.micro_batches) if len(t)]
        ys = [t for t in torch.tensor_split(y, self.config.micro_batches) if len(t)]
        n = len(y)
        micros = [
            _Micro(MicroMeta(self.round, epoch, step, i, len(xs), len(xi), n), xi, yi)
            for i, (xi, yi) in enumerate(zip(xs, ys))
        ]
        up0, down0 = self._bytes
        loss_sum, correct = 0.0, 0
        try:
            for op in plan(len(micros), self.config.window, u_shaped=self.split.u_shaped):
                m = micros[op.micro]
                if op.kind == FWD:
                    self._forward(m)
                elif op.kind == HEAD:
                    l, c = self._head(m)
                    loss_sum, correct = loss_sum + l * m.meta.size, correct + c
                elif op.kind == BWD:
                    reply = self._await(m, "grad", tuple(m.act.shape[1:]))  # type: ignore[union-attr]
                    assert m.act is not None
                    m.act.backward(reply.tensor)  # type: ignore[no-untyped-call]
                    m.act = None
                    if not self.split.u_shaped:
                        assert reply.loss is not None and reply.correct is not None
                        loss_sum, correct = loss_sum + reply.loss * m.meta.size, correct + reply.correct
            self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=loss_sum / n, correct=correct, samples=n,
                          bytes_up=self._bytes[0] - up0, bytes_down=self._bytes[1] - down0)

    def _send(self, m: _Micro, msg: SplitMessage) -> None:
        data = encode_message(msg, dtype=self.config.dtype, codec=self.config.codec)
        self._bytes[0] += len(data)
        m.sent_kind = msg.kind
        m.future = self.channel.submit(data)

    def _await(self, m: _Micro, kind: Kind, shape: tuple[int, ...]) -> SplitMessage:
        assert m.future is not None
        try:
            data = m.future.result(timeout=self.config.reply_timeout_s)
        except TimeoutError as exc:
            raise TransportError(f"no reply from the edge for step {m.meta.step} micro {m.meta.micro} "
                                 f"within {self.config.reply_timeout_s} s") from exc
        self._bytes[1] += len(data)
        expect = Expect(shapes={kind: shape}, max_batch=m.meta.mini_size, reply_to=m.meta,
                        max_bytes=self.config.max_message_bytes)
        return decode_message(data, expect)

    def _forward(self, m: _Micro) -> None:
        m.act = self.split.device(m.x)
        labels = None if self.split.u_shaped else m.y
        self._send(m, SplitMessage("forward", m.meta, m.act.detach(), labels=labels))

    def _head(self, m: _Micro) -> tuple[float, int]:
        """U-shaped: the edge's output is back; run the head, the loss and its backward here."""
        assert self.split.head is not None and self.config.edge_out_shape is not None
        reply = self._await(m, "output", tuple(self.config.edge_out_shape))
        out = reply.tensor.requires_grad_(True)
        logits = self.split.head(out)
        loss = self.loss_fn(logits, m.y)
        (loss * (m.meta.size / m.meta.mini_size)).backward()
        assert out.grad is not None
        self._send(m, SplitMessage("backward", m.meta, out.grad))
        return float(loss.detach()), int((logits.detach().argmax(1) == m.y).sum())
