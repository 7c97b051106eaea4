"""The device's micro-batch schedule, checked by simulation under random stage times (as
cuda_ext's chunk schedule is), and the executor that runs the edge's compute."""
from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
import torch

from fedcore.errors import ConfigError
from fedcore.split import DeviceConfig, DeviceTrainer, EdgeConfig, EdgeTrainer, LocalChannel, cut, probe_shapes, sgd
from fedcore.split import schedule
from fedcore.split.executor import CudaStaging, HostStaging, StagedExecutor
from fedcore.split.schedule import BWD, FWD, HEAD, Op, ScheduleError

CASES = [(1, 1), (4, 1), (4, 2), (4, 4), (8, 3), (16, 4), (5, 8)]


@pytest.mark.parametrize("u", [False, True])
@pytest.mark.parametrize("micro,window", CASES)
def test_plan_invariants_and_makespan_bounds(micro: int, window: int, u: bool) -> None:
    ops = schedule.plan(micro, window, u_shaped=u)
    schedule.check_plan(ops, micro, window, u_shaped=u)
    seq = schedule.plan(micro, 1, u_shaped=u)
    for seed in range(60):
        dur = schedule.random_durations(seed)
        tl = schedule.simulate(ops, dur)
        sequential = schedule.simulate(seq, dur).makespan
        assert tl.makespan <= sequential + 1e-9
        assert tl.makespan >= max(tl.busy.values()) - 1e-9  # no resource does more than its total
        assert all(tl.starts[op] >= tl.replies[op] for op in ops)  # nothing runs before its reply
        assert tl.busy == pytest.approx(schedule.simulate(seq, dur).busy)  # same work, reordered


def test_overlap_hides_transfer_and_edge_behind_device_compute() -> None:
    """Equal stage times 1: the device's fwd+bwd (2 per micro) is the bottleneck; the window
    fills the pipe, so the makespan is 2 M plus the fill, not the sequential 5 M."""
    m = 16
    unit = lambda stage, micro: 1.0  # noqa: E731
    piped = schedule.simulate(schedule.plan(m, 4), unit).makespan
    seq = schedule.simulate(schedule.plan(m, 1), unit).makespan
    assert seq == pytest.approx(5 * m)
    assert piped <= 2 * m + 3


def test_checker_has_teeth() -> None:
    ops = schedule.plan(6, 2)
    with pytest.raises(ScheduleError, match="over the window"):
        schedule.check_plan(ops, 6, 1)
    swapped = ops[:]
    i, j = swapped.index(Op(BWD, 2)), swapped.index(Op(BWD, 3))
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(ScheduleError, match="order"):
        schedule.check_plan(swapped, 6, 2)
    with pytest.raises(ScheduleError, match="expected after"):
        schedule.check_plan([Op(BWD, 0), Op(FWD, 0)], 1, 1)
    with pytest.raises(ScheduleError, match="expected after"):
        schedule.check_plan(schedule.plan(3, 2, u_shaped=True), 3, 2, u_shaped=False)


class _Log:
    def __init__(self, inner: LocalChannel) -> None:
        self.inner, self.sent = inner, []  # type: ignore[var-annotated]

    def submit(self, message: bytes) -> Future[bytes]:
        from fedcore import wire

        meta = wire.payload_info(message).meta
        self.sent.append(Op(FWD if meta["split"] == "forward" else HEAD, meta["micro"]))
        return self.inner.submit(message)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("u", [False, True])
def test_device_trainer_follows_the_plan(u: bool) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.Linear(4, 3))
    split = cut(model, "1", head_at="2" if u else None)
    x, y = torch.randn(10, 8), torch.randint(0, 3, (10,))
    sh = probe_shapes(split, x[:2])
    cfg = EdgeConfig(cut_shape=sh.cut, max_micro_batch=10, u_shaped=u, edge_out_shape=sh.edge_out if u else None)
    with EdgeTrainer(split.edge, cfg) as edge:
        log = _Log(LocalChannel(edge))
        dev = DeviceTrainer(split, log, DeviceConfig(micro_batches=5, window=3, edge_out_shape=sh.edge_out if u else None),
                            optimizer=sgd(0.1))
        dev.train_step(x, y, epoch=0, step=0)
    # every message is sent by a FWD (or, U-shaped, a HEAD) op, in plan order
    assert log.sent == [op for op in schedule.plan(5, 3, u_shaped=u) if op.kind in (FWD, HEAD)]


def test_executor_launches_ahead_and_finishes_in_order() -> None:
    """The loop the CUDA path relies on: up to ``depth`` launches before the oldest finish,
    results in submission order, an error in one task only fails that task."""
    events: list[str] = []
    gate = threading.Event()
    ex = StagedExecutor(HostStaging(), depth=2, queue_size=8)
    try:
        held = ex.submit(lambda _s: gate.wait(5), lambda ok: ok)  # hold the worker: the next three queue up
        futs = []
        for i in range(3):
            def launch(_s, i=i):  # type: ignore[no-untyped-def]
                events.append(f"L{i}")
                if i == 1:
                    raise ValueError("bad task")
                return i

            def finish(p, i=i):  # type: ignore[no-untyped-def]
                events.append(f"F{i}")
                return p * 10

            futs.append(ex.submit(launch, finish))
        gate.set()
        assert held.result(5) is True
        assert futs[0].result(5) == 0 and futs[2].result(5) == 20
        with pytest.raises(ValueError, match="bad task"):
            futs[1].result(5)
        assert events == ["L0", "L1", "L2", "F0", "F2"]
    finally:
        gate.set()
        ex.close()


def test_cuda_staging_needs_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA path is exercised by the GPU tests instead")
    with pytest.raises(ConfigError, match="no GPU"):
        CudaStaging(torch.device("cuda"))
    with pytest.raises(ConfigError, match="no GPU"):
        EdgeTrainer(torch.nn.Linear(2, 2), EdgeConfig(cut_shape=(2,), max_micro_batch=4, device="cuda"))


class _DeferredStaging(HostStaging):
    """CPU stand-in with the GPU's asynchrony: a download holds NaN until its fence is waited,
    and uploads/downloads outside the task's stream context fail. An edge that read a result
    before waiting (or issued work outside its stream) would send NaN, which the device refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.waits = 0

    def stream(self):  # type: ignore[no-untyped-def]
        import contextlib

        @contextlib.contextmanager
        def ctx():  # type: ignore[no-untyped-def]
            self.inside += 1
            try:
                yield
            finally:
                self.inside -= 1

        return ctx()

    def upload(self, t: torch.Tensor) -> torch.Tensor:
        assert self.inside, "upload outside the compute stream"
        return t.clone()

    def download(self, t: torch.Tensor) -> torch.Tensor:
        assert self.inside, "download outside the compute stream"
        host = torch.full_like(t, float("nan"))
        self.pending.append((host, t.detach().clone()))
        return host

    def fence(self):  # type: ignore[no-untyped-def]
        batch, self.pending = self.pending, []

        def wait() -> None:
            self.waits += 1
            for host, value in batch:
                host.copy_(value)

        return wait


@pytest.mark.parametrize("u", [False, True])
def test_edge_respects_async_staging(u: bool) -> None:
    """The CUDA path's structure (launch → download → fence → finish), on CPU."""
    from fedcore import loops
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6), torch.nn.Linear(6, 3))

    ref = model()
    loops.train(ref, data, epochs=1, batch_size=8, lr=0.1, seed=0)
    m = model()
    split = cut(m, "1", head_at="2" if u else None)
    sh = probe_shapes(split, data.tensors[0][:2])
    staging = _DeferredStaging()
    cfg = EdgeConfig(cut_shape=sh.cut, max_micro_batch=8, u_shaped=u, edge_out_shape=sh.edge_out if u else None, depth=3)
    with EdgeTrainer(split.edge, cfg, optimizer=sgd(0.1), staging=staging) as edge:
        dev = DeviceTrainer(split, LocalChannel(edge), DeviceConfig(micro_batches=4, window=4,
                            edge_out_shape=sh.edge_out if u else None), optimizer=sgd(0.1))
        dev.train(data, epochs=1, batch_size=8, seed=0)
    assert staging.waits == 4 * 4 * (2 if u else 1)
    for k, v in ref.state_dict().items():
        assert torch.allclose(v, m.state_dict()[k], atol=1e-6), k


def test_closed_executor_refuses_new_tasks() -> None:
    ex = StagedExecutor(HostStaging())
    assert ex.call(lambda: 7) == 7
    ex.close()
    with pytest.raises(RuntimeError, match="closed"):
        ex.submit(lambda _s: 1, lambda p: p)
