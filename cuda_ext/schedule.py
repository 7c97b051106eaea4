"""Chunk schedule of the host->device->host pipeline, and a CPU simulator for it.

The CUDA launcher follows the C++ planner in ``csrc/schedule.h``; this module mirrors it
(tests check both agree) so the schedule's safety can be checked on machines without a GPU:
each chunk's compute waits for its copy, and no buffer slot is overwritten while an earlier
chunk still reads it. Pure Python, no torch import.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

H2D, COMPUTE, D2H = 0, 1, 2  # op kind == stream index == event kind
OP_NAMES = ("H2D", "COMPUTE", "D2H")


@dataclass(frozen=True)
class Wait:
    kind: int
    slot: int
    chunk: int


@dataclass(frozen=True)
class Step:
    op: int
    chunk: int
    slot: int
    row_begin: int
    row_end: int
    waits: tuple[Wait, ...] = field(default=())

    def as_tuple(self) -> tuple:
        """Same layout as ``_C.plan_schedule`` returns, for comparing the two planners."""
        return (self.op, self.chunk, self.slot, self.row_begin, self.row_end,
                tuple((w.kind, w.slot, w.chunk) for w in self.waits))


def chunk_rows_for(rows: int, chunks: int) -> int:
    if rows <= 0:
        return 0
    chunks = min(max(chunks, 1), rows)
    return -(-rows // chunks)


def default_chunks(rows: int, row_bytes: int, target_chunk_bytes: int = 4 << 20) -> int:
    """Enough chunks to overlap (>= 4 when rows allow) without tiny, launch-bound copies."""
    if rows <= 0:
        return 1
    by_size = -(-rows * row_bytes // target_chunk_bytes)
    return max(1, min(rows, max(4, min(by_size, 64))))


def plan(rows: int, chunks: int, n_buffers: int = 2) -> list[Step]:
    """Steps in host enqueue order (mirror of ``fedcore_sched::plan``)."""
    steps: list[Step] = []
    if rows <= 0:
        return steps
    n_buffers = max(1, n_buffers)
    cr = chunk_rows_for(rows, chunks)
    for i in range(-(-rows // cr)):
        b = i % n_buffers
        r0, r1 = i * cr, min(rows, i * cr + cr)
        reuse = i >= n_buffers
        steps.append(Step(H2D, i, b, r0, r1,
                          (Wait(COMPUTE, b, i - n_buffers),) if reuse else ()))
        steps.append(Step(COMPUTE, i, b, r0, r1,
                          (Wait(H2D, b, i),) + ((Wait(D2H, b, i - n_buffers),) if reuse else ())))
        steps.append(Step(D2H, i, b, r0, r1, (Wait(COMPUTE, b, i),)))
    return steps


class ScheduleError(AssertionError):
    """The plan would race on a buffer, or an event wait observes the wrong record."""


@dataclass
class Timeline:
    start: dict[tuple[int, int], float]  # (op, chunk) -> start time
    end: dict[tuple[int, int], float]
    makespan: float


def simulate(steps: list[Step], duration) -> Timeline:
    """Run the plan as three FIFO streams with per-(kind, slot) re-recorded events.

    ``duration(step) -> float``. A wait observes the latest record enqueued before it, as
    cudaStreamWaitEvent does; a wait that would observe another chunk's record (or none)
    is a ScheduleError. Then :func:`check_hazards` checks the buffer accesses.
    """
    stream_free = [0.0, 0.0, 0.0]
    latest: dict[tuple[int, int], tuple[int, float]] = {}  # (kind, slot) -> (chunk, done)
    start: dict[tuple[int, int], float] = {}
    end: dict[tuple[int, int], float] = {}
    for st in steps:
        t = stream_free[st.op]
        for w in st.waits:
            rec = latest.get((w.kind, w.slot))
            if rec is None or rec[0] != w.chunk:
                raise ScheduleError(f"{OP_NAMES[st.op]}({st.chunk}) waits {OP_NAMES[w.kind]}"
                                    f"[slot {w.slot}] for chunk {w.chunk} but sees {rec}")
            t = max(t, rec[1])
        start[(st.op, st.chunk)] = t
        end[(st.op, st.chunk)] = t + float(duration(st))
        stream_free[st.op] = end[(st.op, st.chunk)]
        latest[(st.op, st.slot)] = (st.chunk, end[(st.op, st.chunk)])
    return Timeline(start, end, max(end.values(), default=0.0))


def check_hazards(steps: list[Step], tl: Timeline, rows: int) -> None:
    """Every chunk: H2D < COMPUTE < D2H; per slot, accesses of different chunks disjoint."""
    covered = 0
    chunks = sorted({s.chunk for s in steps})
    for c in chunks:
        mine = [s for s in steps if s.chunk == c]
        if sorted(s.op for s in mine) != [H2D, COMPUTE, D2H]:
            raise ScheduleError(f"chunk {c} lacks an op: {mine}")
        covered += mine[0].row_end - mine[0].row_begin
        if tl.start[(COMPUTE, c)] < tl.end[(H2D, c)]:
            raise ScheduleError(f"COMPUTE({c}) starts before its H2D finished")
        if tl.start[(D2H, c)] < tl.end[(COMPUTE, c)]:
            raise ScheduleError(f"D2H({c}) starts before its COMPUTE finished")
    if covered != rows:
        raise ScheduleError(f"chunks cover {covered} rows, expected {rows}")
    # input slot: H2D writes, COMPUTE reads; output slot: COMPUTE writes, D2H reads.
    for buf, ops in (("input", (H2D, COMPUTE)), ("output", (COMPUTE, D2H))):
        spans: dict[int, list[tuple[float, float, int]]] = {}
        for s in steps:
            if s.op in ops:
                spans.setdefault(s.slot, []).append((tl.start[(s.op, s.chunk)],
                                                     tl.end[(s.op, s.chunk)], s.chunk))
        for slot, acc in spans.items():
            lo_hi: dict[int, tuple[float, float]] = {}
            for a, b, c in acc:  # the interval a chunk occupies the slot: first use..last use
                lo, hi = lo_hi.get(c, (a, b))
                lo_hi[c] = (min(lo, a), max(hi, b))
            occ = sorted((lo, hi, c) for c, (lo, hi) in lo_hi.items())
            for (_, hi, c1), (lo, _, c2) in zip(occ, occ[1:]):
                if lo < hi:
                    raise ScheduleError(f"{buf} slot {slot}: chunk {c2} reuses it at {lo} "
                                        f"while chunk {c1} holds it until {hi}")


def random_durations(seed: int, spread: float = 10.0):
    """Adversarial-ish random durations: each op 0.01..spread, drawn per step."""
    rng = random.Random(seed)
    return lambda step: rng.uniform(0.01, spread) if rng.random() < 0.8 else rng.uniform(0.0, 0.01)
