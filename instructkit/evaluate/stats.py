"""Summaries a reader can trust: means with bootstrap intervals, paired differences, win rates and
agreement between two sets of scores. Unscored items are counted, never averaged in as zeros."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


# The paired differences a run reports: each training step against the model it started from.
STEPS = {"finetuned_minus_base": ("base", "finetuned"), "preference_minus_finetuned": ("finetuned", "preference")}


def step_differences(models: Sequence[str], values: Callable[[str], Sequence[float | None]], seed: int) -> dict:
    """`paired_difference` of every step in STEPS whose two models both answered."""
    return {name: paired_difference(values(before), values(after), seed)
            for name, (before, after) in STEPS.items() if before in models and after in models}


def mcnemar(base_correct: dict, tuned_correct: dict, names: tuple[str, str] = ("base", "finetuned")) -> dict:
    """Exact McNemar test on per-question correctness of two models (paired): the one before a
    training step and the one after it, named by `names`."""
    from scipy.stats import binomtest

    shared = sorted(set(base_correct) & set(tuned_correct))
    only_base = sum(base_correct[d] and not tuned_correct[d] for d in shared)
    only_tuned = sum(tuned_correct[d] and not base_correct[d] for d in shared)
    discordant = only_base + only_tuned
    p_value = binomtest(only_tuned, discordant, 0.5).pvalue if discordant else 1.0
    return {"n_paired": len(shared), f"{names[0]}_only_correct": only_base, f"{names[1]}_only_correct": only_tuned,
            "p_value": p_value}


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


def length_controlled_win_rate(outcomes: Sequence[float], length_differences: Sequence[float]) -> dict:
    """AlpacaEval 2's idea on one pair of models: a logistic model of the preference on the
    standardized length difference, and the win rate it predicts at zero length difference.

    P(win) = sigmoid(b + w * tanh(d / sd(d))), d = this model's answer length minus the other's
    (words). b is the model's strength with length taken out: sigmoid(b) is the length-controlled win
    rate. A tie counts as half a win (the record enters as a win and a loss, weight 0.5 each). The fit
    is scikit-learn's L2-regularized logistic regression (C = 1, the intercept unpenalized), so a
    judge that always picks the longer answer gives a finite length weight and a win rate near 0.5,
    where plain maximum likelihood would diverge. AlpacaEval's own model also has a term per
    instruction, fitted over its fixed 805 questions against one baseline across many models; with
    one pair of models on your own test split there is nothing to fit such a term on, so it is left
    out. Assumes the length effect is the same for every instruction and bounded (the tanh).
    """
    from sklearn.linear_model import LogisticRegression

    y, d = np.asarray(outcomes, dtype=float), np.asarray(length_differences, dtype=float)
    if len(y) < 2 or np.all(y == y[0]) and y[0] != 0.5:
        return {"win_rate": None, "note": "needs at least two verdicts that are not all the same"}
    scale = d.std() or 1.0
    x = np.tanh(d / scale)[:, None]
    features, labels, weights = np.vstack([x, x]), np.r_[np.ones(len(y)), np.zeros(len(y))], np.r_[y, 1 - y]
    keep = weights > 0
    if len(set(labels[keep])) < 2:
        return {"win_rate": None, "note": "needs at least one win and one loss (a tie counts as both)"}
    fit = LogisticRegression(C=1.0).fit(features[keep], labels[keep], sample_weight=weights[keep])
    result = {"win_rate": round(float(1 / (1 + np.exp(-fit.intercept_[0]))), 4),
              "length_weight": round(float(fit.coef_[0][0]), 4), "length_sd_words": round(float(scale), 2),
              "method": "logistic regression on tanh(length difference / sd), predicted at zero difference (scikit-learn)"}
    decided = y != 0.5
    if decided.any() and len(set(y[decided])) == 2 and (np.all((y[decided] == 1) == (d[decided] > 0))
                                                          or np.all((y[decided] == 1) == (d[decided] < 0))):
        result["note"] = ("every decided verdict went to the longer answer (or every one to the shorter): length alone "
                          "explains them, so the data cannot tell quality from length and this rate is poorly determined")
    return result


def agreement(first: Sequence[float], second: Sequence[float]) -> dict:
    """Spearman and Pearson correlation and mean absolute difference of paired scores."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    result: dict = {"n": len(a), "mean_absolute_difference": round(float(np.abs(a - b).mean()), 4) if len(a) else None}
    for name, fn in (("spearman", stats.spearmanr), ("pearson", stats.pearsonr)):
        value = float(fn(a, b)[0]) if len(a) >= 3 and a.std() > 0 and b.std() > 0 else math.nan
        result[name] = None if math.isnan(value) else round(value, 4)
    return result


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A number as `spec` formats it, or "n/a" when there is none: how every stage prints a value."""
    return "n/a" if value is None else format(value, spec)


def fmt_interval(summary: dict, spec: str, template: str = "[{}, {}]", equal: str = "", missing: str = "") -> str:
    """A summary's 95% interval in `template`; `equal` when it has none because all values were
    equal (`ci95_note`), `missing` when it has none otherwise."""
    ci = summary.get("ci95")
    if ci:
        return template.format(format(ci[0], spec), format(ci[1], spec))
    return equal if summary.get("ci95_note") else missing
