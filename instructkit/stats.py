"""Summaries a reader can trust: means with bootstrap intervals, paired differences, win rates and
agreement between two sets of scores. Unscored items are counted, never averaged in as zeros."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

RESAMPLES = 10_000


def bootstrap_ci(values: Sequence[float], seed: int, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval for the mean; None with fewer than two values, or when they are
    all equal (every resample is then the same value: that is no interval, whatever it would print)."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2 or np.all(data == data[0]):
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(RESAMPLES, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return round(float(low), 4), round(float(high), 4)


def describe(values: Sequence[float | None], seed: int) -> dict:
    """Mean, median and a 95% interval over the scored values, with how many were scored."""
    scored = [v for v in values if v is not None]
    summary = {
        "n_scored": len(scored),
        "n_total": len(values),
        "mean": round(float(np.mean(scored)), 4) if scored else None,
        "median": round(float(np.median(scored)), 4) if scored else None,
        "ci95": bootstrap_ci(scored, seed),
    }
    if summary["ci95"] is None and len(scored) >= 2:
        summary["ci95_note"] = f"degenerate: all {len(scored)} values are {scored[0]}; the bootstrap gives no interval"
    return summary


def paired_difference(first: Sequence[float | None], second: Sequence[float | None], seed: int) -> dict:
    """`second - first` over the items where both are scored (finetuned minus base)."""
    pairs = [(a, b) for a, b in zip(first, second) if a is not None and b is not None]
    summary = describe([b - a for a, b in pairs], seed)
    summary["n_pairs"] = summary.pop("n_scored")
    summary["n_total"] = len(first)
    return summary


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion: valid for small n and for 0 or n successes, where
    a bootstrap collapses to a point. Written out because scipy's binomtest().proportion_ci takes
    whole successes, and a tie counts as half of one."""
    if n == 0:
        return None
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4)


def win_rate(outcomes: Sequence[float]) -> dict:
    """Outcomes are 1 (win), 0.5 (tie) or 0 (loss); the win rate counts a tie as half a win, and its
    interval is Wilson's with a tie as half a success."""
    return {"win_rate": round(float(np.mean(outcomes)), 4) if outcomes else None,
            "ci95": wilson_interval(float(sum(outcomes)), len(outcomes)), "ci_method": "wilson"}


def agreement(first: Sequence[float], second: Sequence[float]) -> dict:
    """Spearman and Pearson correlation and mean absolute difference of paired scores."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    result: dict = {"n": len(a), "mean_absolute_difference": round(float(np.abs(a - b).mean()), 4) if len(a) else None}
    for name, fn in (("spearman", stats.spearmanr), ("pearson", stats.pearsonr)):
        value = float(fn(a, b)[0]) if len(a) >= 3 and a.std() > 0 and b.std() > 0 else math.nan
        result[name] = None if math.isnan(value) else round(value, 4)
    return result
