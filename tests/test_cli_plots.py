"""The demo's accuracy plot: round ticks are whole numbers."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from fedcore.app.plots import accuracy_figure, plot_accuracy


def test_round_ticks_are_integers(tmp_path: Path) -> None:
    history = [{"round": 1, "accuracy": 0.8}, {"round": 2, "accuracy": 0.9}]
    fig = accuracy_figure({"federated": history})
    try:
        ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 2]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    finally:
        plt.close(fig)
    assert plot_accuracy({"federated": history}, tmp_path / "a.png").stat().st_size > 1000
