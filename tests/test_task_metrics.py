"""Judge-free task metrics: the libraries' documented values on fixed strings, the normalization of
exact match, and the per-model summary with its paired difference."""

from pathlib import Path

import pytest

from instructkit.evaluate.metrics import TEXT_METRICS, normalize, resolve_metrics
from instructkit.evaluate.task_metrics import task_metrics

pytestmark = pytest.mark.fast


def record_metrics(response: str, reference: str) -> dict[str, float]:
    return {name: function(response, {"output": reference}) for name, (_, function) in TEXT_METRICS.items()}


def test_rouge_l_is_rouge_scores_documented_value():
    # rouge-score's README: target "The quick brown fox jumps over the lazy dog", prediction
    # "The quick brown dog jumps on the log." -> rougeL P 0.625, R 0.5556, F 0.5882.
    metrics = record_metrics("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog")
    assert metrics["rouge_l"] == pytest.approx(58.8235, abs=1e-3)
    assert metrics["exact_match"] == 0


def test_bleu_and_chrf_are_sacrebleus():
    import sacrebleu

    # sacrebleu's README example (two reference sets): BLEU 48.53, chrF2 59.73.
    refs = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
            ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    system = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    assert round(sacrebleu.corpus_bleu(system, refs).score, 2) == 48.53
    assert round(sacrebleu.corpus_chrf(system, refs).score, 2) == 59.73
    # Ours, one reference per record: identical text is perfect, a disjoint one scores nothing.
    same = record_metrics("The dog bit the man.", "The dog bit the man.")
    assert same == {"exact_match": 100.0, "rouge_l": 100.0, "chrf": 100.0, "bleu": 100.0}
    disjoint = record_metrics("Cats sleep.", "Rivers flow north.")
    assert disjoint["exact_match"] == 0 and disjoint["rouge_l"] == 0 and disjoint["chrf"] < 10
    # Sentence BLEU on short answers is noisy: the shared full stop alone scores about 20.
    assert disjoint["bleu"] == pytest.approx(sacrebleu.sentence_bleu("Cats sleep.", ["Rivers flow north."]).score, abs=1e-4)
    assert disjoint["bleu"] > 10
    assert record_metrics(system[1], refs[0][1])["chrf"] == pytest.approx(sacrebleu.sentence_chrf(system[1], [refs[0][1]]).score, abs=1e-4)


def test_exact_match_normalizes_case_punctuation_and_articles():
    assert normalize("  The Eiffel Tower! ") == "eiffel tower"
    assert record_metrics("the eiffel tower", "Eiffel Tower.")["exact_match"] == 100.0
    assert record_metrics("Eiffel", "Eiffel Tower.")["exact_match"] == 0.0


def test_summary_with_intervals_and_paired_difference():
    records = [{"output": "Paris", "base": "London", "finetuned": "Paris"},
               {"output": "4", "base": "4", "finetuned": "4"},
               {"output": "blue whale", "base": "a shark", "finetuned": "The blue whale."},
               {"output": "water", "base": None, "finetuned": "water"}]
    result = task_metrics(records, ["base", "finetuned"], 0, resolve_metrics([], Path(".")), "test records")
    assert result["summary"]["base"]["exact_match"]["n_scored"] == 3  # no response: counted, not averaged
    assert result["summary"]["finetuned"]["exact_match"]["mean"] == 100.0
    assert result["summary"]["base"]["exact_match"]["mean"] == pytest.approx(100 / 3, abs=1e-3)
    difference = result["finetuned_minus_base"]["exact_match"]
    assert difference["n_pairs"] == 3 and difference["mean"] == pytest.approx(200 / 3, abs=1e-3)
    assert result["records"][3]["base"] is None and result["records"][0]["finetuned"]["exact_match"] == 100.0
    # exact match is pass/fail: its paired difference carries McNemar's test (2 records only the finetune gets)
    assert result["pass_fail"] == ["exact_match"] and result["lead"] == "rouge_l"
    assert difference["mcnemar"]["base_only_correct"] == 0 and difference["mcnemar"]["finetuned_only_correct"] == 2
    assert "mcnemar" not in result["finetuned_minus_base"]["rouge_l"]
