"""The device's micro-batch schedule, and a simulator that checks it under any stage times.

:func:`plan` is the order in which a device runs its work for one mini-batch; the
:class:`~fedcore.split.device.DeviceTrainer` executes exactly this list. With a window of W
micro-batches in flight, the forward of micro i+1 is issued while micro i is on the link or at
the edge, and the backward of micro i−1 runs when its gradient is back: transfer hides behind
compute. W = 1 is the sequential schedule. Backwards always run in micro-batch order, so the
accumulated gradient is summed in the same order whatever W is.
"""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

OpKind = Literal["fwd", "head", "bwd"]
FWD: OpKind = "fwd"
HEAD: OpKind = "head"  # U-shaped only: the edge's output is back; device head forward+backward
BWD: OpKind = "bwd"


class ScheduleError(AssertionError):
    """A plan breaks an invariant (window, order, a missing or repeated operation)."""


@dataclass(frozen=True)
class Op:
    kind: OpKind
    micro: int


def plan(num_micro: int, window: int, *, u_shaped: bool = False) -> list[Op]:
    """Device operations for one mini-batch of ``num_micro`` micro-batches, at most ``window``
    of them between their forward and their backward."""
    if num_micro < 0 or window < 1:
        raise ValueError("num_micro must be >= 0 and window >= 1")
    ops: list[Op] = []
    inflight: deque[int] = deque()
    headed: set[int] = set()

    def advance() -> None:
        if u_shaped:
            waiting = [m for m in inflight if m not in headed]
            if waiting:
                ops.append(Op(HEAD, waiting[0]))
                headed.add(waiting[0])
                return
        ops.append(Op(BWD, inflight.popleft()))

    for i in range(num_micro):
        while len(inflight) >= window:
            advance()
        ops.append(Op(FWD, i))
        inflight.append(i)
    while inflight:
        advance()
    return ops


def check_plan(ops: list[Op], num_micro: int, window: int, *, u_shaped: bool = False) -> None:
    """Raise :class:`ScheduleError` unless every micro-batch is forwarded, (headed,) and backed
    once in that order, backwards in micro-batch order, and never more than ``window`` open."""
    state: dict[int, OpKind] = {}
    backs: list[int] = []
    open_now = 0
    for op in ops:
        prev = state.get(op.micro)
        want_prev: OpKind | None = {FWD: None, HEAD: FWD, BWD: HEAD if u_shaped else FWD}[op.kind]
        if prev != want_prev or (op.kind == HEAD and not u_shaped):
            raise ScheduleError(f"{op} follows {prev!r}, expected after {want_prev!r}")
        state[op.micro] = op.kind
        if op.kind == FWD:
            open_now += 1
            if open_now > window:
                raise ScheduleError(f"{op} opens micro-batch number {open_now}, over the window of {window}")
        elif op.kind == BWD:
            open_now -= 1
            backs.append(op.micro)
    if backs != list(range(num_micro)):
        raise ScheduleError(f"backwards ran in order {backs}, not 0..{num_micro - 1}")


Stage = Literal["fwd", "up", "edge", "down", "head", "up2", "edge2", "down2", "bwd"]
Durations = Callable[[Stage, int], float]


@dataclass(frozen=True)
class Timeline:
    """Result of :func:`simulate`: when the mini-batch ends, each resource's busy time, and
    when each device operation started (for invariant checks)."""

    makespan: float
    busy: dict[str, float]
    starts: dict[Op, float]
    replies: dict[Op, float]


def simulate(ops: list[Op], dur: Durations) -> Timeline:
    """Four FIFO resources: the device (runs ``ops`` in order), the uplink, the edge and the
    downlink. A message is sent when its device op ends and is served by each resource in
    sending order; a device op that needs a reply waits for it."""
    free = {"device": 0.0, "up": 0.0, "edge": 0.0, "down": 0.0}
    busy = dict.fromkeys(free, 0.0)
    reply_at: dict[int, float] = {}
    starts: dict[Op, float] = {}
    replies: dict[Op, float] = {}

    def use(res: str, ready: float, d: float) -> float:
        start = max(ready, free[res])
        free[res] = start + d
        busy[res] += d
        return start + d

    def exchange(sent: float, micro: int, second: bool) -> float:
        sfx = "2" if second else ""
        t = use("up", sent, dur(f"up{sfx}", micro))  # type: ignore[arg-type]
        t = use("edge", t, dur(f"edge{sfx}", micro))  # type: ignore[arg-type]
        return use("down", t, dur(f"down{sfx}", micro))  # type: ignore[arg-type]

    for op in ops:
        ready = 0.0 if op.kind == FWD else reply_at[op.micro]
        replies[op] = ready
        starts[op] = max(ready, free["device"])
        end = use("device", ready, dur(op.kind, op.micro))
        if op.kind == FWD:
            reply_at[op.micro] = exchange(end, op.micro, second=False)
        elif op.kind == HEAD:
            reply_at[op.micro] = exchange(end, op.micro, second=True)
    return Timeline(makespan=max(free.values()), busy=busy, starts=starts, replies=replies)


def random_durations(seed: int, *, spread: float = 10.0) -> Durations:
    """Independent random stage times in [1, spread] (memoised, so one seed is one timing)."""
    rng = random.Random(seed)
    memo: dict[tuple[str, int], float] = {}

    def dur(stage: Stage, micro: int) -> float:
        return memo.setdefault((stage, micro), rng.uniform(1.0, spread))

    return dur
