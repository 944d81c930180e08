"""Plots a person would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402


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
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return Path(path)
