"""Split training end to end in one process: equals a centralised run, GPipe accumulation,
drop-out mid-epoch, U-shaped privacy, per-device edges, and the ViT's cut."""
from __future__ import annotations

from concurrent.futures import Future

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedcore import loops, wire
from fedcore.app.models import digits_mlp
from fedcore.app.vit import ViT
from fedcore.errors import PayloadError, TransportError
from fedcore.split import (
    DeviceConfig,
    DeviceTrainer,
    EdgeConfig,
    EdgeTrainer,
    Link,
    LocalChannel,
    MicroMeta,
    SplitMessage,
    cut,
    cut_points,
    encode_message,
    probe_shapes,
    sgd,
)
from fedcore.split.messages import LABELS

LR = 0.05


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g))


def _mlp(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return digits_mlp()


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def _edge(split, example, *, u: bool = False, **kw) -> EdgeTrainer:
    sh = probe_shapes(split, example)
    cfg = EdgeConfig(cut_shape=sh.cut, max_micro_batch=64, num_classes=10, u_shaped=u,
                     edge_out_shape=sh.edge_out if u else None, **kw)
    return EdgeTrainer(split.edge, cfg, optimizer=sgd(LR))


def _split_train(model: nn.Module, at: str, data: TensorDataset, *, window: int, micro: int,
                 head_at: str | None = None, epochs: int = 2, batch: int = 16, link: Link | None = None,
                 record: list[bytes] | None = None):
    split = cut(model, at, head_at=head_at)
    x0 = data.tensors[0][:2]
    with _edge(split, x0, u=head_at is not None) as edge:
        channel: object = LocalChannel(edge, link)
        if record is not None:
            channel = _Recording(channel, record)  # type: ignore[arg-type]
        sh = probe_shapes(split, x0)
        cfg = DeviceConfig(micro_batches=micro, window=window, edge_out_shape=sh.edge_out if head_at else None)
        dev = DeviceTrainer(split, channel, cfg, optimizer=sgd(LR))  # type: ignore[arg-type]
        result = dev.train(data, epochs=epochs, batch_size=batch, seed=0)
        channel.close()  # type: ignore[attr-defined]
        return result, edge.optimizer_steps


class _Recording:
    """Keeps a copy of every message and reply that crosses the channel."""

    def __init__(self, inner: LocalChannel, log: list[bytes]) -> None:
        self.inner, self.log = inner, log

    def submit(self, message: bytes) -> Future[bytes]:
        self.log.append(message)
        fut = self.inner.submit(message)
        fut.add_done_callback(lambda f: self.log.append(f.result()) if f.exception() is None else None)
        return fut

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("window,micro", [(1, 1), (4, 1), (1, 4), (4, 4), (2, 3)])
def test_split_equals_centralised(window: int, micro: int) -> None:
    data = _data()
    ref = _mlp()
    loops.train(ref, data, epochs=2, batch_size=16, lr=LR, seed=0)
    model = _mlp()
    result, steps = _split_train(model, "1", data, window=window, micro=micro)
    assert steps == 2 * 6  # one edge step per mini-batch, whatever M
    assert _max_diff(ref, model) < 2e-6
    assert result.epochs[-1].samples == 96
    untrained = _mlp()
    assert _max_diff(untrained, model) > 1e-3  # it did train


def test_u_shaped_equals_centralised_and_never_sends_labels() -> None:
    data = _data()
    ref = _mlp()
    loops.train(ref, data, epochs=2, batch_size=16, lr=LR, seed=0)
    model = _mlp()
    log: list[bytes] = []
    _, steps = _split_train(model, "1", data, window=3, micro=4, head_at="3", record=log)
    assert steps == 12
    assert _max_diff(ref, model) < 2e-6
    labels = data.tensors[1]
    assert len(log) == 2 * 2 * 12 * 4  # forward, output, backward, grad per micro-batch
    for raw in log:
        header = wire.payload_info(raw).model_dump()
        names = [t["name"] for t in header["tensors"]]
        assert LABELS not in names and len(names) == 1
        assert all(t["dtype"] == "float32" for t in header["tensors"])
        assert "correct" not in header["meta"] and "loss" not in header["meta"]
    from fedcore.split import split_round_config

    u = split_round_config(cut(_mlp(), "1", head_at="3"), data.tensors[0][:2], batch_size=16, num_classes=10)
    t = u.traffic(samples=10)
    assert t.labels_up == 0 and t.outputs_down == t.output_grads_up == 4 * 64 * 10 and u.edge.num_classes is None
    assert set(u.device_params) == {"0.weight", "0.bias", "4.weight", "4.bias"}
    # and the non-U split does send them: the check above can fail
    log2: list[bytes] = []
    _split_train(_mlp(), "1", data, window=2, micro=2, epochs=1, record=log2)
    sent = wire.decode_state(log2[0])
    assert LABELS in sent and torch.equal(sent[LABELS], sent[LABELS].long())


def test_vit_split_equals_centralised() -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g))

    def vit() -> ViT:
        torch.manual_seed(3)
        return ViT(dim=16, depth=3, heads=2, device_blocks=1)

    ref = vit()
    loops.train(ref, data, epochs=1, batch_size=8, lr=LR, seed=0)
    model = vit()
    assert model.cut_at == "blocks.0"
    _split_train(model, model.cut_at, data, window=4, micro=4, epochs=1, batch=8)
    assert _max_diff(ref, model) < 1e-5


def test_link_channel_delivers_the_same_training() -> None:
    data = _data(48)
    a, b = _mlp(), _mlp()
    _split_train(a, "1", data, window=4, micro=4, epochs=1)
    _split_train(b, "1", data, window=4, micro=4, epochs=1, link=Link(latency_s=0.001, bandwidth_bytes_s=50e6))
    assert _max_diff(a, b) == 0.0


def test_cut_points_and_errors() -> None:
    vit = ViT(dim=16, depth=3, heads=2)
    pts = cut_points(vit)
    assert pts[:4] == ["patch_embed", "blocks.0", "blocks.1", "blocks.2"] and "blocks" in pts and "head" not in pts
    with pytest.raises(ValueError, match="valid: patch_embed, blocks.0"):
        cut(vit, "blocks.7")
    with pytest.raises(ValueError, match="must come after"):
        cut(vit, "blocks.1", head_at="blocks.0")
    s = cut(vit, "blocks.1", head_at="norm")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(s.forward(x), vit(x))
    names = set(s.device_side.state_dict())
    assert "blocks.0.attn.qkv.weight" in names and "head.weight" in names and "blocks.2.mlp.0.weight" not in names
    assert set(s.edge.state_dict()) | names == set(vit.state_dict())
    with pytest.raises(RuntimeError, match="U-shaped"):
        s.device_side(x)
    seq = cut(digits_mlp(), "2")
    assert list(seq.edge.state_dict()) == ["4.weight", "4.bias"]


class _FailAfter:
    """A channel whose link dies after ``n`` messages (the device process stopping)."""

    def __init__(self, inner: LocalChannel, n: int) -> None:
        self.inner, self.left = inner, n

    def submit(self, message: bytes) -> Future[bytes]:
        if self.left == 0:
            raise TransportError("device stopped")
        self.left -= 1
        return self.inner.submit(message)

    def close(self) -> None:
        self.inner.close()


def test_device_stopping_mid_batch_leaves_edge_consistent() -> None:
    data = _data(64)
    model = _mlp()
    split = cut(model, "1")
    x0 = data.tensors[0][:2]
    with _edge(split, x0) as edge:
        # 2 full mini-batches (2 x 4 messages), then 2 of the third's 4 micro-batches
        dev = DeviceTrainer(split, _FailAfter(LocalChannel(edge), 10), DeviceConfig(micro_batches=4, window=2),
                            optimizer=sgd(LR))
        xs, ys = data.tensors
        for step in range(2):
            dev.train_step(xs[16 * step: 16 * step + 16], ys[16 * step: 16 * step + 16], epoch=0, step=step)
        after_two = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(TransportError):
            dev.train_step(xs[32:48], ys[32:48], epoch=0, step=2)
        assert all(p.grad is None for p in split.device.parameters())  # no half step on the device
        assert all(torch.equal(after_two[k], v) for k, v in model.state_dict().items())  # nor on the edge
        assert edge.optimizer_steps == 2 and edge.open_micro_batches("device-0") == 2
        # a reconnecting device resending step 2 collides with the stale half mini-batch ...
        again = DeviceTrainer(split, LocalChannel(edge), DeviceConfig(micro_batches=4, window=1), optimizer=sgd(LR))
        with pytest.raises(PayloadError, match="arrived twice"):
            again.train_step(xs[32:48], ys[32:48], epoch=0, step=2)
        # ... until the edge drops it; then the step completes exactly once
        assert edge.drop("device-0") == 2
        assert edge.open_micro_batches("device-0") == 0
        again.train_step(xs[32:48], ys[32:48], epoch=0, step=2)
        assert edge.optimizer_steps == 3 and edge.open_micro_batches("device-0") == 0


def _messages(split, x: torch.Tensor, y: torch.Tensor, *, step: int = 0, micro: int = 4) -> list[bytes]:
    out = []
    with torch.no_grad():
        for i, (xi, yi) in enumerate(zip(torch.tensor_split(x, micro), torch.tensor_split(y, micro))):
            meta = MicroMeta(0, 0, step, i, micro, len(xi), len(x))
            out.append(encode_message(SplitMessage("forward", meta, split.device(xi), labels=yi)))
    return out


def test_edge_accumulates_out_of_order_and_steps_once() -> None:
    x, y = _data(16).tensors
    results = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        model = _mlp()
        split = cut(model, "1")
        msgs = _messages(split, x, y)
        with _edge(split, x[:2]) as edge:
            for n, i in enumerate(order):
                assert edge.optimizer_steps == 0
                edge.handle("c", msgs[i])
                assert edge.open_micro_batches("c") == (n + 1) % 4
            assert edge.optimizer_steps == 1
            results.append(edge.edge_state())
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-7) for k in results[0])
    assert any(not torch.equal(results[0][k], _mlp().state_dict()[k]) for k in results[0])


def test_per_device_edges_are_separate_and_shared_edge_is_one() -> None:
    x, y = _data(16).tensors
    for per_device in (False, True):
        split = cut(_mlp(), "1")
        msgs = _messages(split, x, y)
        with _edge(split, x[:2], per_device=per_device) as edge:
            for m in msgs:
                edge.handle("a", m)
            a, b = edge.edge_state("a"), edge.edge_state("b")
            same = all(torch.equal(a[k], b[k]) for k in a)
            assert same is (not per_device)
            state = edge.state_dict()
            assert set(state["replicas"]) == ({"a"} if per_device else {""})
            assert state["steps"] == 1


def test_edge_refuses_too_many_open_mini_batches() -> None:
    x, y = _data(16).tensors
    split = cut(_mlp(), "1")
    from fedcore.errors import RoundStateError

    with _edge(split, x[:2], max_open_steps=2) as edge:
        edge.handle("c", _messages(split, x, y, step=0)[0])
        edge.handle("c", _messages(split, x, y, step=1)[0])
        with pytest.raises(RoundStateError, match="unfinished"):
            edge.handle("c", _messages(split, x, y, step=2)[0])
        assert edge.open_micro_batches("c") == 2


def test_splitfed_round_averages_the_device_part_with_the_existing_strategy() -> None:
    """Two devices, one shared edge: each trains its copy of the global device part, FedAvg
    (unchanged) averages the uploads; the edge part stays on the server."""
    import copy

    from fedcore.split import split_round_config
    from fedcore.strategy import FedAvg

    server_model = _mlp()
    server = cut(server_model, "1")
    data = [_data(32, seed=10), _data(48, seed=11)]
    rc = split_round_config(server, data[0].tensors[0][:2], batch_size=16, micro_batches=2, window=2, num_classes=10)
    assert set(rc.device_params).isdisjoint(rc.edge_params)
    assert set(rc.device_params) | set(rc.edge_params) == {n for n, _ in server_model.named_parameters()}
    t = rc.traffic(samples=48, epochs=2)
    assert t.activations_up == t.gradients_down == 4 * 128 * 96 and t.labels_up == 8 * 96
    assert t.params_up == 4 * (64 * 128 + 128) and t.fedavg_params == 4 * sum(p.numel() for p in server_model.parameters())

    strategy = FedAvg()
    global_state = {k: v.clone() for k, v in rc.global_model.state_dict().items()}
    edge_before = {k: v.clone() for k, v in server.edge.state_dict().items()}
    with EdgeTrainer(server.edge, rc.edge, optimizer=sgd(LR)) as edge:
        strategy.begin_round(global_state)
        uploads = []
        for k, d in enumerate(data):
            local = cut(copy.deepcopy(server_model), "1")
            local.device_side.load_state_dict(global_state)
            dev = DeviceTrainer(local, LocalChannel(edge, client_id=f"dev-{k}"), rc.device, optimizer=sgd(LR))
            dev.train(d, epochs=1, batch_size=16, seed=k)
            uploads.append((local.device_side.state_dict(), len(d)))
            strategy.accumulate(*uploads[-1])
        new = strategy.finish(global_state)
        rc.global_model.load_state_dict(new)
        assert edge.optimizer_steps == 2 + 3
    want = {k: (uploads[0][0][k] * 32 + uploads[1][0][k] * 48) / 80 for k in new}
    assert all(torch.allclose(new[k], want[k], atol=1e-6) for k in new)
    assert all(torch.equal(server_model.state_dict()[k], new[k]) for k in new)  # global model = device part
    assert any(not torch.equal(server.edge.state_dict()[k], edge_before[k]) for k in edge_before)


def test_devices_in_parallel_threads_on_per_device_edges_match_solo_runs() -> None:
    """Thread safety: three devices train at once against one EdgeTrainer (one edge replica
    each); every replica ends exactly as if its device had trained alone."""
    import copy
    import threading

    base = _mlp()
    datas = [_data(48, seed=20 + k) for k in range(3)]

    def run(k: int, edge: EdgeTrainer) -> nn.Module:
        local = cut(copy.deepcopy(base), "1")
        dev = DeviceTrainer(local, LocalChannel(edge, client_id=f"d{k}"), DeviceConfig(micro_batches=3, window=2),
                            optimizer=sgd(LR))
        dev.train(datas[k], epochs=1, batch_size=16, seed=k)
        return local.device

    solo = []
    for k in range(3):
        with _edge(cut(copy.deepcopy(base), "1"), datas[0].tensors[0][:2], per_device=True) as edge:
            dev_part = run(k, edge)
            solo.append((dev_part.state_dict(), edge.edge_state(f"d{k}")))

    errors: list[BaseException] = []
    with _edge(cut(copy.deepcopy(base), "1"), datas[0].tensors[0][:2], per_device=True) as edge:
        parts: dict[int, nn.Module] = {}

        def worker(k: int) -> None:
            try:
                parts[k] = run(k, edge)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and len(parts) == 3
        assert edge.optimizer_steps == 3 * 3
        for k in range(3):
            dev_state, edge_state = solo[k]
            # Rounding-level tolerance: under contention a float sum can be taken in another
            # order (1 ulp seen, 7e-9); replicas mixed up would differ by the size of an update.
            for n, v in parts[k].state_dict().items():
                assert torch.allclose(dev_state[n], v, rtol=0, atol=1e-7), (k, "device", n)
            for n, v in edge.edge_state(f"d{k}").items():
                assert torch.allclose(edge_state[n], v, rtol=0, atol=1e-7), (k, "edge", n)
