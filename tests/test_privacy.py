"""Differential privacy: clipping, noise, accounting, adaptive clipping, local DP.

References are computed here independently (numpy for clipping and statistics, a fresh
dp-accounting RdpAccountant for epsilon), and the federation parts run for real (the in-process
transport, real clients training on digits).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, Harness, make_settings, wait_until
from fedcore.config import Settings
from fedcore.errors import ConfigError
from fedcore.privacy.accountant import epsilon_after, noise_for_epsilon
from fedcore.privacy.central import DPConfig, DPStrategy, update_noise_multiplier
from fedcore.privacy.local import privatize_update
from fedcore.strategy import FedAvg, make_strategy

dpa = pytest.importorskip("dp_accounting", reason="dp-accounting is not installed (pip install '.[privacy]')")
pytestmark = pytest.mark.timeout(180)


def _flat(state: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([state[k].double().numpy().ravel() for k in sorted(state) if state[k].is_floating_point()])


def _np_clip(delta: np.ndarray, c: float) -> np.ndarray:
    n = np.linalg.norm(delta)
    return delta * min(1.0, c / n) if n > 0 else delta


def _model(rng: np.random.Generator, scale: float = 0.1) -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.tensor(rng.normal(0, scale, (5, 4)), dtype=torch.float32),
            "fc.bias": torch.tensor(rng.normal(0, scale, 5), dtype=torch.float32),
            "bn.num_batches_tracked": torch.tensor(7)}


def _dp(inner: FedAvg | None = None, **kw: object) -> DPStrategy:
    return DPStrategy(inner or FedAvg(), DPConfig(**kw))  # type: ignore[arg-type]


def test_every_accumulated_update_is_clipped_and_the_mean_is_unweighted() -> None:
    rng = np.random.default_rng(1)
    glob = _model(rng)
    c = 0.5
    strat = _dp(clip_norm=c, noise_multiplier=0.0)
    strat.begin_round(glob)
    g = _flat(glob)
    expected = []
    prev = np.zeros_like(g)
    for k, size in enumerate([0.1, 0.3, 2.0, 0.8, 7.5, 0.49, 0.51, 30.0]):  # below, just above and far above C
        direction = rng.normal(size=g.size)
        delta = direction / np.linalg.norm(direction) * size
        flat = g + delta
        state, off = {}, 0
        for name in sorted(glob):
            t = glob[name]
            if t.is_floating_point():
                state[name] = torch.tensor(flat[off:off + t.numel()].reshape(t.shape), dtype=torch.float64)
                off += t.numel()
            else:
                state[name] = torch.tensor(1000 + k)  # a client's counter never reaches the model
        strat.accumulate(state, num_samples=10 ** k)  # wildly different weights: ignored
        now = _flat({n: strat.partial.sums[n] for n in glob if glob[n].is_floating_point()})
        accumulated = now - prev  # what this client added to the round's sum of updates
        prev = now
        ref = _np_clip(flat - g, c)
        assert np.linalg.norm(accumulated) <= c * (1 + 1e-9)
        np.testing.assert_allclose(accumulated, ref, atol=1e-6)
        expected.append(ref)
    out = strat.finish(glob)
    np.testing.assert_allclose(_flat(out), g + np.mean(expected, axis=0), atol=1e-6)
    assert int(out["bn.num_batches_tracked"]) == 7
    m = strat.round_metrics()
    assert m["dp_clipped_fraction"] == pytest.approx(5 / 8)
    assert m["dp_clip_norm"] == c and "dp_epsilon" not in m  # no noise, no finite epsilon


def test_noise_std_is_noise_multiplier_times_clip_over_clients() -> None:
    glob = {"w": torch.zeros(400, 500)}  # 200,000 coordinates
    z, c, m = 1.3, 0.7, 8
    strat = _dp(clip_norm=c, noise_multiplier=z, seed=5)
    strat.begin_round(glob)
    for _ in range(m):
        strat.accumulate({"w": torch.zeros(400, 500)}, 1)  # Δ = 0: the output is the noise alone
    out = strat.finish(glob)["w"].double().numpy().ravel()
    want = z * c / m
    assert abs(out.std() / want - 1) < 0.02
    assert abs(out.mean()) < 4 * want / np.sqrt(out.size)
    again = _dp(clip_norm=c, noise_multiplier=z, seed=5)  # a seed reproduces the noise
    again.begin_round(glob)
    for _ in range(m):
        again.accumulate({"w": torch.zeros(400, 500)}, 1)
    assert torch.equal(again.finish(glob)["w"], torch.from_numpy(out.reshape(400, 500)).float())
    unseeded = _dp(clip_norm=c, noise_multiplier=z)
    unseeded.begin_round(glob)
    unseeded.accumulate({"w": torch.zeros(400, 500)}, 1)
    assert not torch.equal(unseeded.finish(glob)["w"][0, :10], torch.from_numpy(out[:10]).float())


def test_epsilon_in_history_equals_an_independent_accountant(harness: Harness) -> None:
    z, population, delta = 1.1, 6, 1e-5
    settings = make_settings("memory", min_clients=3, strategy="dp-fedavg", dp_noise_multiplier=z,
                             dp_clip_norm=0.8, dp_population=population, dp_delta=delta, dtype="fp32")
    srv = harness.server(settings, stop_when_done=True)
    assert srv.federation.strategy.name == "dp-fedavg"
    for i in range(3):
        harness.client(srv, f"c{i}", i, transport="memory")
    wait_until(lambda: srv.federation.status().ready == 3, what="3 ready clients")
    srv.federation.start_autorun(3)
    assert srv.federation.wait_for_round(3, 120)
    hist = srv.federation.history()
    for r, rec in enumerate(hist, start=1):
        acc = dpa.rdp.RdpAccountant()
        acc.compose(dpa.PoissonSampledDpEvent(3 / population, dpa.GaussianDpEvent(z)), r)
        sm = rec.strategy_metrics
        assert sm["dp_epsilon"] == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
        assert sm["dp_delta"] == delta and sm["dp_noise_multiplier"] == z and sm["dp_clip_norm"] == 0.8
        assert 0.0 <= sm["dp_clipped_fraction"] <= 1.0
    assert hist[0].strategy_metrics["dp_epsilon"] < hist[2].strategy_metrics["dp_epsilon"]


@pytest.mark.parametrize("quantile", [0.5, 0.9])
def test_adaptive_clip_moves_toward_the_target_quantile(quantile: float) -> None:
    rng = np.random.default_rng(3)
    dim, m, rounds = 16, 100, 45
    glob = {"w": torch.zeros(dim, dtype=torch.float64)}
    strat = _dp(clip_norm=0.3, noise_multiplier=1.0, adaptive=True, target_quantile=quantile, clip_lr=0.2, seed=1)
    seen: list[float] = []
    clips = []
    for _ in range(rounds):
        strat.begin_round(glob)
        norms = rng.uniform(1.0, 3.0, m)  # the true quantile is 1 + 2q
        seen.extend(norms)
        for n in norms:
            d = rng.normal(size=dim)
            strat.accumulate({"w": torch.tensor(d / np.linalg.norm(d) * n)}, 1)
        strat.finish(glob)
        clips.append(strat.round_metrics()["dp_next_clip_norm"])
    target = float(np.quantile(seen, quantile))
    start_gap = abs(0.3 - target)
    assert abs(clips[10] - target) < start_gap  # moving toward it
    final = np.mean(clips[-10:])
    assert abs(final - target) / target < 0.08, (final, target)
    assert clips[-1] == pytest.approx(strat.clip_norm)
    # The count's noise is paid from the same budget: the updates get a larger multiplier than z.
    assert update_noise_multiplier(1.0, m / 20) > 1.0


def test_local_dp_clips_what_is_sent_before_noise() -> None:
    rng = np.random.default_rng(4)
    ref = _model(rng)
    trained = {k: (v + torch.tensor(rng.normal(0, 1.0, v.shape), dtype=v.dtype)) if v.is_floating_point()
               else torch.tensor(99) for k, v in ref.items()}
    g = torch.Generator().manual_seed(0)
    clipped = privatize_update(trained, ref, 0.25, 0.0, g)
    d = _flat(clipped) - _flat(ref)
    np.testing.assert_allclose(d, _np_clip(_flat(trained) - _flat(ref), 0.25), atol=1e-6)
    assert int(clipped["bn.num_batches_tracked"]) == 7  # the step counter stays home
    noisy = privatize_update(trained, ref, 0.25, 3.0, torch.Generator().manual_seed(0))
    assert np.linalg.norm(_flat(noisy) - _flat(clipped)) > 0.25


def _recording() -> tuple[FedAvg, list[dict[str, torch.Tensor]]]:
    got: list[dict[str, torch.Tensor]] = []

    class Recording(FedAvg):
        def accumulate(self, state, num_samples):  # type: ignore[no-untyped-def]
            got.append({k: v.clone() for k, v in state.items()})
            super().accumulate(state, num_samples)

    return Recording(), got


@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_local_dp_on_real_clients(harness: Harness, noise: float) -> None:
    clip = 0.1
    strategy, got = _recording()
    srv = harness.server(make_settings("memory", min_clients=2, dtype="fp32"), strategy=strategy, stop_when_done=True)
    glob = {k: v.clone() for k, v in srv.federation.global_state.items()}
    for i in range(2):
        harness.client(srv.client_settings(local_dp_clip=clip, local_dp_noise=noise), f"c{i}", i, transport="memory")
    wait_until(lambda: srv.federation.status().ready == 2, what="2 ready clients")
    srv.federation.start_autorun(1)
    assert srv.federation.wait_for_round(1, 120)
    assert len(got) == 2
    for state in got:
        d = _flat(state) - _flat(glob)
        if noise == 0:
            # training moves an MLP much farther than 0.1 in one epoch: the clip is what bounds it
            assert np.linalg.norm(d) == pytest.approx(clip, rel=1e-4)
        else:  # noise of std z·C on every coordinate dwarfs the clipped update (norm <= C)
            assert abs(d.std() / (noise * clip) - 1) < 0.05
            assert np.linalg.norm(d) > 10 * clip


def test_noise_for_target_epsilon_round_trips() -> None:
    for rounds, q in [(30, 1.0), (20, 0.25)]:
        z = noise_for_epsilon(8.0, rounds, q, 1e-5)
        assert epsilon_after(z, rounds, q, 1e-5) <= 8.0
        assert epsilon_after(z, rounds, q, 1e-5) == pytest.approx(8.0, rel=5e-3)
        assert epsilon_after(z * 0.98, rounds, q, 1e-5) > 8.0  # the smallest such noise


def test_target_epsilon_setting_calibrates_the_noise() -> None:
    s = Settings(strategy="dp-fedavg", dp_target_epsilon=4.0, rounds=10, dp_seed=0)
    strat = make_strategy(s.strategy, settings=s)
    assert isinstance(strat, DPStrategy) and strat.noise_multiplier is None
    glob = {"w": torch.zeros(10)}
    for _ in range(10):
        strat.begin_round(glob)
        for _ in range(4):
            strat.accumulate({"w": torch.ones(10)}, 1)
        strat.finish(glob)
    assert strat.round_metrics()["dp_epsilon"] == pytest.approx(4.0, rel=5e-3)


def test_missing_accountant_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import dp_accounting -> ImportError
    with pytest.raises(ConfigError, match=r"fedcore\[privacy\]"):
        make_strategy("dp-fedavg")
    code = ("import sys; sys.modules['dp_accounting'] = None\n"
            "import fedcore, fedcore.client, fedcore.federation, fedcore.privacy, fedcore.sim\n"
            "from fedcore.strategy import make_strategy; make_strategy('fedavg'); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="averages a sum"):
        DPStrategy(make_strategy("dp-fedavg"))
    with pytest.raises(ValueError, match="target_quantile"):
        DPConfig(adaptive=True, target_quantile=1.5)
    with pytest.raises(ValueError, match="above"):
        update_noise_multiplier(2.0, 0.5)
    with pytest.raises(ValueError, match="local_dp_clip"):
        Settings(local_dp_clip=-1.0)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("dp-nope")
