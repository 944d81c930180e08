"""Plots a person would rather look at than read."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from .artifacts import write_bytes_atomic  # noqa: E402


def plot_loss(train: list[dict], val: list[dict], path: str | Path, title: str) -> Path:
    """Train loss per step and validation loss per evaluation on one set of axes."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot([p["step"] for p in train], [p["loss"] for p in train], label="train loss", alpha=0.8)
    if val:
        ax.plot([p["step"] for p in val], [p["loss"] for p in val], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (response tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_score_histograms(scores: dict[str, list[float | None]], path: str | Path) -> Path:
    """One histogram of 0-100 judge scores per model, on shared bins; unscored responses noted."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    bins = list(range(0, 105, 5))
    for model, values in scores.items():
        scored = [v for v in values if v is not None]
        ax.hist(scored, bins=bins, alpha=0.55, label=f"{model} ({len(scored)}/{len(values)} scored)")
    ax.set_xlabel("judge score (0-100)")
    ax.set_ylabel("responses")
    ax.set_title("Judge scores per model")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return write_bytes_atomic(path, png.getvalue())
