"""Plots a person would rather look at than read."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from instructkit.runs.artifacts import write_bytes_atomic  # noqa: E402


def _plain_text(plot):
    """Every label drawn as written: names come from the data (models, categories, a model's path),
    and matplotlib would read a pair of `$` in one as a formula (and stop at a malformed one)."""
    @functools.wraps(plot)
    def plain(*args, **kwargs):
        with plt.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)
    return plain


@_plain_text
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


@_plain_text
def plot_preference(train: list[dict], val: list[dict], path: str | Path, title: str) -> Path:
    """Stage 1b: the loss (training per step, held-out per evaluation) beside the held-out reward
    margin and, for DPO, preference accuracy."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    left.plot([p["step"] for p in train], [p["loss"] for p in train], label="train loss", alpha=0.8)
    if val:
        left.plot([p["step"] for p in val], [p["loss"] for p in val], "o-", label="held-out loss")
        right.plot([p["step"] for p in val], [p.get("margin") for p in val], "o-", label="held-out reward margin")
        if all("accuracy" in p for p in val):  # DPO's; KTO has no pairs to rank
            accuracy = right.twinx()
            accuracy.plot([p["step"] for p in val], [p["accuracy"] for p in val], "s--", color="tab:green",
                          label="held-out preference accuracy")
            accuracy.set_ylim(-0.02, 1.02)
            accuracy.set_ylabel("chosen ranked above rejected")
            accuracy.legend(loc="lower right")
        right.legend(loc="upper left")
    if train and abs(train[0]["loss"] - 0.6931) < 0.05:  # DPO starts at the reference: ln 2
        left.axhline(0.6931, color="grey", linestyle=":", label="ln 2 (the reference itself)")
    left.set_xlabel("optimizer step")
    left.set_ylabel("loss")
    left.legend()
    right.set_xlabel("optimizer step")
    right.set_ylabel("reward margin (beta x log-ratio)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


@_plain_text
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


@_plain_text
def plot_category_changes(changes: dict[str, dict], path: str | Path, metric: str) -> Path:
    """Finetuned minus base per category (mean and 95% interval), worst first: which kinds of task
    the finetuning helped and which it hurt."""
    names = list(changes)
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * len(names)), dpi=120)
    means = [changes[n]["mean"] or 0.0 for n in names]
    errors = [[m - (changes[n]["ci95"] or (m, m))[0] for n, m in zip(names, means)],
              [(changes[n]["ci95"] or (m, m))[1] - m for n, m in zip(names, means)]]
    ax.barh(names, means, xerr=errors, color=["#b8433a" if m < 0 else "#2f7d4f" for m in means], alpha=0.8, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(f"finetuned − base, {metric} (0-100), with 95% bootstrap interval")
    ax.set_title("Change by kind of task")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


@_plain_text
def plot_category_means(means: dict[str, dict[str, dict]], path: str | Path, scale: str) -> Path:
    """Each model's mean rating per category with its 95% interval, grouped by category."""
    models = list(means)
    categories = sorted({c for per_model in means.values() for c in per_model})
    fig, ax = plt.subplots(figsize=(7, 1 + 0.45 * len(categories) * max(1, len(models)) ** 0.5), dpi=120)
    height = 0.8 / max(len(models), 1)
    for k, model in enumerate(models):
        stats = [means[model].get(c) or {"mean": None, "ci95": None} for c in categories]
        values = [s["mean"] or 0.0 for s in stats]
        errors = [[v - (s["ci95"] or (v, v))[0] for v, s in zip(values, stats)],
                  [(s["ci95"] or (v, v))[1] - v for v, s in zip(values, stats)]]
        ax.barh([i + k * height for i in range(len(categories))], values, height=height, xerr=errors, capsize=2,
                label=model, alpha=0.85)
    ax.set_yticks([i + height * (len(models) - 1) / 2 for i in range(len(categories))], categories)
    ax.invert_yaxis()
    ax.set_xlabel(f"mean rating ({scale}), with 95% bootstrap interval")
    ax.set_title("Ratings by category")
    ax.grid(alpha=0.3, axis="x")
    ax.legend()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return write_bytes_atomic(path, png.getvalue())
