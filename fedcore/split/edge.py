"""The edge's side of split training: the rest of the model, its loss, backward and optimizer.

``EdgeTrainer.handle(client_id, bytes) -> bytes`` is everything a transport needs: it decodes
a micro-batch message (refusing anything unexpected), runs the edge compute on the edge's own
executor and returns the encoded reply. Micro-batches of one mini-batch have their gradients
accumulated per client and the optimizer steps once, when the mini-batch's last micro-batch
arrives (GPipe), in whatever order they arrive. ``drop(client_id)`` discards a client's
unfinished mini-batches, so a device that stops mid-epoch never causes a half step.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedcore.errors import ConfigError, PayloadError, RoundStateError
from fedcore.split.executor import StagedExecutor, Staging, make_staging
from fedcore.split.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Expect,
    Kind,
    MicroMeta,
    SplitMessage,
    decode_message,
    encode_message,
)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def sgd(lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4) -> OptimizerFactory:
    """The optimizer of ``fedcore.loops.train``, so split and centralised runs compare exactly."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@dataclass(frozen=True)
class EdgeConfig:
    """Shapes are per sample (no batch dimension). ``u_shaped``: devices keep the head, so
    messages carry no labels and the edge answers a forward with its output; ``edge_out_shape``
    is then the shape of that output. ``per_device``: one edge model per device instead of
    one shared. ``depth``: micro-batches launched ahead on the executor. ``device``: "cpu"
    (a worker thread) or "cuda[:n]" (CUDA streams, pinned buffers, events)."""

    cut_shape: tuple[int, ...]
    max_micro_batch: int
    num_classes: int | None = None
    per_device: bool = False
    u_shaped: bool = False
    edge_out_shape: tuple[int, ...] | None = None
    reply_dtype: str = "fp32"
    reply_codec: str = "none"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_open_steps: int = 2
    device: str = "cpu"
    queue_size: int = 64
    depth: int = 2

    def __post_init__(self) -> None:
        if self.u_shaped and self.edge_out_shape is None:
            raise ConfigError("a U-shaped edge needs edge_out_shape (see fedcore.split.probe_shapes)")
        if self.max_micro_batch < 1 or self.max_open_steps < 1:
            raise ConfigError("max_micro_batch and max_open_steps must be >= 1")


@dataclass
class _Replica:
    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer


@dataclass
class _Open:
    """One client's unfinished mini-batch: which micro-batches are in, and their summed grads."""

    num_micro: int
    mini_size: int
    forwarded: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)
    grads: list[torch.Tensor] | None = None
    graphs: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Pending:
    kind: Kind
    meta: MicroMeta
    tensor: torch.Tensor
    stats: torch.Tensor | None
    wait: Callable[[], None]


Key = tuple[int, int, int]


class EdgeTrainer:
    """Trains the edge part for every device that sends it micro-batches. Thread-safe: any
    number of transport threads may call :meth:`handle`; all compute and state changes run
    in order on one executor."""

    def __init__(self, edge: nn.Module, config: EdgeConfig, *, optimizer: OptimizerFactory | None = None,
                 loss_fn: nn.Module | None = None, staging: Staging | None = None) -> None:
        self.config = config
        self._staging = staging or make_staging(config.device)
        self._template = edge.to(self._staging.device)
        self._make_opt = optimizer or sgd()
        self._loss = loss_fn or nn.CrossEntropyLoss()
        self._replicas: dict[str, _Replica] = {}
        self._open: dict[str, dict[Key, _Open]] = {}
        self._steps = 0
        shapes: dict[Kind, tuple[int, ...]] = {"forward": tuple(config.cut_shape)}
        if config.u_shaped:
            assert config.edge_out_shape is not None
            shapes["backward"] = tuple(config.edge_out_shape)
        self._expect = Expect(shapes=shapes, max_batch=config.max_micro_batch,
                              labels_with=() if config.u_shaped else ("forward",),
                              num_classes=config.num_classes, max_bytes=config.max_message_bytes)
        self._executor = StagedExecutor(self._staging, queue_size=config.queue_size, depth=config.depth)

    # ---- public API -------------------------------------------------------------------
    def submit(self, client_id: str, data: bytes | memoryview) -> Future[bytes]:
        """Decode ``data`` here (a bad message raises :class:`PayloadError` at once) and queue
        its compute; the future resolves to the encoded reply."""
        msg = decode_message(data, self._expect)
        return self._executor.submit(lambda s: self._launch(s, client_id, msg), self._finish)

    def handle(self, client_id: str, data: bytes | memoryview) -> bytes:
        """One message in, its reply out (blocking)."""
        return self.submit(client_id, data).result()

    def drop(self, client_id: str) -> int:
        """Forget ``client_id``'s unfinished mini-batches (a device left mid-epoch or reconnects);
        returns how many micro-batches were discarded. Its finished steps stay applied."""
        def discard() -> int:
            opened = self._open.pop(client_id, {})
            return sum(len(o.forwarded) for o in opened.values())

        return self._executor.call(discard)

    @property
    def optimizer_steps(self) -> int:
        """Edge optimizer steps taken so far, over all clients."""
        return self._executor.call(lambda: self._steps)

    def open_micro_batches(self, client_id: str) -> int:
        """Micro-batches of ``client_id`` received but not yet part of a finished step."""
        return self._executor.call(lambda: sum(len(o.forwarded) for o in self._open.get(client_id, {}).values()))

    def edge_state(self, client_id: str | None = None) -> dict[str, torch.Tensor]:
        """A CPU copy of the edge model's weights (the shared one, or ``client_id``'s)."""
        def read() -> dict[str, torch.Tensor]:
            rep = self._replicas.get(client_id) if self.config.per_device and client_id else None
            model = rep.model if rep is not None else self._template  # unseen client: where it would start
            if self._staging.device.type == "cuda":
                torch.cuda.synchronize(self._staging.device)
            return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

        return self._executor.call(read)

    def state_dict(self) -> dict[str, Any]:
        """Everything the edge holds between rounds: each model and its optimizer state."""
        def read() -> dict[str, Any]:
            if self._staging.device.type == "cuda":
                torch.cuda.synchronize(self._staging.device)
            replicas = {cid: {"model": copy.deepcopy(r.model.state_dict()),
                              "optimizer": copy.deepcopy(r.optimizer.state_dict())}
                        for cid, r in self._replicas.items()}
            return {"replicas": replicas, "steps": self._steps}

        return self._executor.call(read)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def load() -> None:
            self._steps = int(state["steps"])
            for cid, entry in state["replicas"].items():
                rep = self._replica(cid or None)
                rep.model.load_state_dict(entry["model"])
                rep.optimizer.load_state_dict(entry["optimizer"])
            self._open.clear()

        self._executor.call(load)

    def close(self) -> None:
        self._executor.close()

    def __enter__(self) -> EdgeTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- on the executor ----------------------------------------------------------------
    def _replica(self, client_id: str | None) -> _Replica:
        key = client_id if self.config.per_device and client_id is not None else ""
        rep = self._replicas.get(key)
        if rep is None:
            model = copy.deepcopy(self._template) if key else self._template
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            rep = self._replicas[key] = _Replica(model, params, self._make_opt(params))
        return rep

    def _record(self, client_id: str, meta: MicroMeta, create: bool) -> tuple[Key, _Open]:
        opened = self._open.setdefault(client_id, {})
        key = (meta.round, meta.epoch, meta.step)
        rec = opened.get(key)
        if rec is None:
            if not create:
                raise PayloadError(f"backward for step {meta.step} micro {meta.micro}, whose forward the edge has not seen")
            if len(opened) >= self.config.max_open_steps:
                raise RoundStateError(f"client {client_id!r} already has {len(opened)} unfinished mini-batches open")
            rec = opened[key] = _Open(meta.num_micro, meta.mini_size)
        elif (rec.num_micro, rec.mini_size) != (meta.num_micro, meta.mini_size):
            raise PayloadError(f"step {meta.step}: micro-batch {meta.micro} says {meta.num_micro} micro-batches of "
                               f"{meta.mini_size} samples, earlier ones said {rec.num_micro} of {rec.mini_size}")
        return key, rec

    def _launch(self, staging: Staging, client_id: str, msg: SplitMessage) -> _Pending:
        if msg.kind == "backward":
            return self._launch_backward(staging, client_id, msg)
        meta = msg.meta
        key, rec = self._record(client_id, meta, create=True)
        if meta.micro in rec.forwarded:
            raise PayloadError(f"step {meta.step} micro-batch {meta.micro} arrived twice")
        rep = self._replica(client_id)
        a = staging.upload(msg.tensor).requires_grad_(True)
        out = rep.model(a)
        rec.forwarded.add(meta.micro)
        if self.config.u_shaped:
            rec.graphs[meta.micro] = (a, out)
            return _Pending("output", meta, staging.download(out.detach()), None, staging.fence())
        assert msg.labels is not None
        y = staging.upload(msg.labels)
        loss = self._loss(out, y)
        grads = torch.autograd.grad(loss * (meta.size / meta.mini_size), [a, *rep.params], allow_unused=True)
        stats = torch.stack([loss.detach().float(), (out.detach().argmax(1) == y).sum().float()])
        a_grad = staging.download(grads[0])
        self._accumulate(client_id, key, rec, rep, meta.micro, grads[1:])
        return _Pending("grad", meta, a_grad, staging.download(stats), staging.fence())

    def _launch_backward(self, staging: Staging, client_id: str, msg: SplitMessage) -> _Pending:
        meta = msg.meta
        key, rec = self._record(client_id, meta, create=False)
        graph = rec.graphs.get(meta.micro)
        if graph is None:
            raise PayloadError(f"step {meta.step} micro-batch {meta.micro}: no forward awaiting this backward")
        a, out = graph
        if tuple(msg.tensor.shape) != tuple(out.shape):
            raise PayloadError(f"output gradient {list(msg.tensor.shape)} does not match the output {list(out.shape)}")
        del rec.graphs[meta.micro]
        rep = self._replica(client_id)
        grads = torch.autograd.grad(out, [a, *rep.params], staging.upload(msg.tensor), allow_unused=True)
        a_grad = staging.download(grads[0])
        self._accumulate(client_id, key, rec, rep, meta.micro, grads[1:])
        return _Pending("grad", meta, a_grad, None, staging.fence())

    def _accumulate(self, client_id: str, key: Key, rec: _Open, rep: _Replica, micro: int,
                    grads: tuple[torch.Tensor | None, ...]) -> None:
        full = [torch.zeros_like(p) if g is None else g for p, g in zip(rep.params, grads)]
        if rec.grads is None:
            rec.grads = full
        else:
            for acc, g in zip(rec.grads, full):
                acc.add_(g)
        rec.done.add(micro)
        if len(rec.done) < rec.num_micro:
            return
        for p, g in zip(rep.params, rec.grads):
            p.grad = g
        rep.optimizer.step()
        rep.optimizer.zero_grad(set_to_none=True)
        del self._open[client_id][key]
        self._steps += 1

    def _finish(self, pending: _Pending) -> bytes:
        pending.wait()
        loss = correct = None
        if pending.stats is not None:
            loss, correct = float(pending.stats[0]), int(pending.stats[1])
        reply = SplitMessage(kind=pending.kind, meta=pending.meta, tensor=pending.tensor, loss=loss, correct=correct)
        return encode_message(reply, dtype=self.config.reply_dtype, codec=self.config.reply_codec)
