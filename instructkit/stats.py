"""Summaries a reader can trust: means with bootstrap intervals, paired differences, win rates and
agreement between two sets of scores. Unscored items are counted, never averaged in as zeros."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

RESAMPLES = 10_000


def bootstrap_ci(values: Sequence[float], seed: int, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval for the mean; None with fewer than two values."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(RESAMPLES, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return round(float(low), 4), round(float(high), 4)


def describe(values: Sequence[float | None], seed: int) -> dict:
    """Mean, median and a 95% interval over the scored values, with how many were scored."""
    scored = [v for v in values if v is not None]
    return {
        "n_scored": len(scored),
        "n_total": len(values),
        "mean": round(float(np.mean(scored)), 4) if scored else None,
        "median": round(float(np.median(scored)), 4) if scored else None,
        "ci95": bootstrap_ci(scored, seed),
    }


def paired_difference(first: Sequence[float | None], second: Sequence[float | None], seed: int) -> dict:
    """`second - first` over the items where both are scored (finetuned minus base)."""
    pairs = [(a, b) for a, b in zip(first, second) if a is not None and b is not None]
    summary = describe([b - a for a, b in pairs], seed)
    summary["n_pairs"] = summary.pop("n_scored")
    summary["n_total"] = len(first)
    return summary


def win_rate(outcomes: Sequence[float], seed: int) -> dict:
    """Outcomes are 1 (win), 0.5 (tie) or 0 (loss); the win rate counts a tie as half a win."""
    return {"win_rate": round(float(np.mean(outcomes)), 4) if outcomes else None, "ci95": bootstrap_ci(outcomes, seed)}


def agreement(first: Sequence[float], second: Sequence[float]) -> dict:
    """Spearman and Pearson correlation and mean absolute difference of paired scores."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    result: dict = {"n": len(a), "mean_absolute_difference": round(float(np.abs(a - b).mean()), 4) if len(a) else None}
    for name, fn in (("spearman", stats.spearmanr), ("pearson", stats.pearsonr)):
        value = float(fn(a, b)[0]) if len(a) >= 3 and a.std() > 0 and b.std() > 0 else math.nan
        result[name] = None if math.isnan(value) else round(value, 4)
    return result
