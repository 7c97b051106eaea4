"""Plots of round histories (matplotlib, headless)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def accuracy_figure(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    title: str = "Global model accuracy per round",
    baseline: float | None = None,
    baseline_label: str = "centralised",
) -> Any:
    """The figure: one line per history (label → list of round entries with 'round' and 'accuracy')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, hist in series.items():
        pts = [(h["round"], h["accuracy"]) for h in hist if h.get("accuracy") is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    if baseline is not None:
        ax.axhline(baseline, linestyle="--", color="black", label=baseline_label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers: no "1.5"
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_accuracy(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    title: str = "Global model accuracy per round",
    baseline: float | None = None,
    baseline_label: str = "centralised",
) -> Path:
    """Save :func:`accuracy_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = accuracy_figure(series, title=title, baseline=baseline, baseline_label=baseline_label)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
