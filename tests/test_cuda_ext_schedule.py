"""CPU simulation of the host->device->host chunk schedule that the CUDA launcher follows."""
from __future__ import annotations

import itertools

import pytest

from cuda_ext import _backend, schedule
from cuda_ext.schedule import COMPUTE, D2H, H2D, ScheduleError, Step, Wait

CASES = [(1, 1), (5, 1), (10, 3), (100, 7), (1000, 64), (17, 17), (3, 10)]


@pytest.mark.parametrize("rows,chunks", CASES)
@pytest.mark.parametrize("n_buffers", [1, 2, 3])
def test_plan_is_safe_under_random_timings(rows, chunks, n_buffers):
    steps = schedule.plan(rows, chunks, n_buffers)
    for seed in range(30):
        tl = schedule.simulate(steps, schedule.random_durations(seed))
        schedule.check_hazards(steps, tl, rows)


@pytest.mark.parametrize("rows,chunks", CASES)
def test_compute_waits_for_its_copy_and_slots_alternate(rows, chunks):
    steps = schedule.plan(rows, chunks, 2)
    for st in steps:
        assert st.slot == st.chunk % 2
        if st.op == COMPUTE:
            assert Wait(H2D, st.slot, st.chunk) in st.waits
            if st.chunk >= 2:  # output slot must be drained by the D2H of chunk - 2
                assert Wait(D2H, st.slot, st.chunk - 2) in st.waits
        if st.op == H2D and st.chunk >= 2:  # input slot free once compute of chunk - 2 is done
            assert st.waits == (Wait(COMPUTE, st.slot, st.chunk - 2),)


def test_plan_overlaps_copy_and_compute():
    """Equal copy/compute times: makespan ~ (n + 2) t, not the sequential 3 n t."""
    n = 16
    steps = schedule.plan(n * 10, n, 2)
    tl = schedule.simulate(steps, lambda st: 1.0)
    assert tl.makespan == pytest.approx(n + 2)
    seq = schedule.simulate(schedule.plan(n * 10, 1, 2), lambda st: float(n))
    assert seq.makespan == pytest.approx(3 * n)


def _drop_wait(steps: list[Step], op: int, chunk: int, kind: int) -> list[Step]:
    out = []
    for st in steps:
        if st.op == op and st.chunk == chunk:
            st = Step(st.op, st.chunk, st.slot, st.row_begin, st.row_end,
                      tuple(w for w in st.waits if w.kind != kind))
        out.append(st)
    return out


@pytest.mark.parametrize("op,kind", [(COMPUTE, H2D), (H2D, COMPUTE), (COMPUTE, D2H), (D2H, COMPUTE)])
def test_simulator_catches_a_missing_wait(op, kind):
    """The checker has teeth: removing any one wait is detected under some timing."""
    steps = _drop_wait(schedule.plan(60, 6, 2), op, 3, kind)
    with pytest.raises(ScheduleError):
        for seed in range(200):
            schedule.check_hazards(steps, schedule.simulate(steps, schedule.random_durations(seed)), 60)


def test_simulator_catches_a_stale_event_record():
    """Reordering enqueue so that a wait observes the wrong chunk's record is detected."""
    steps = schedule.plan(40, 4, 2)
    swapped = steps[:]
    i = next(k for k, s in enumerate(steps) if s.op == H2D and s.chunk == 2)
    j = next(k for k, s in enumerate(steps) if s.op == COMPUTE and s.chunk == 0)
    swapped.insert(j, swapped.pop(i))  # H2D(2) enqueued before COMPUTE(0) is recorded
    with pytest.raises(ScheduleError):
        schedule.simulate(swapped, lambda st: 1.0)


def test_chunk_sizes_cover_rows_exactly():
    for rows, chunks in itertools.product([1, 2, 9, 100, 101], [1, 2, 3, 50, 200]):
        steps = [s for s in schedule.plan(rows, chunks) if s.op == H2D]
        assert steps[0].row_begin == 0 and steps[-1].row_end == rows
        assert all(a.row_end == b.row_begin for a, b in zip(steps, steps[1:]))
        assert len(steps) == min(rows, -(-rows // schedule.chunk_rows_for(rows, chunks)))
    assert schedule.plan(0, 4) == []


@pytest.mark.skipif(_backend._C is None, reason="compiled backend not active")
@pytest.mark.parametrize("rows,chunks", CASES + [(0, 3)])
@pytest.mark.parametrize("n_buffers", [1, 2, 3])
def test_cpp_planner_matches_python(rows, chunks, n_buffers):
    """The launcher follows csrc/schedule.h; it must be the plan simulated above."""
    cpp = [tuple(s) for s in _backend._C.plan_schedule(rows, chunks, n_buffers)]
    assert cpp == [s.as_tuple() for s in schedule.plan(rows, chunks, n_buffers)]
