"""Each score against numbers worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from align.eval import scores, text_metrics
from align.eval.compare import Row, row_metrics
from align.eval.generate import Answer


def test_bootstrap_of_two_values_spans_both():
    # resampling [0, 1] twice gives means 0 (p 1/4), 1/2 (p 1/2), 1 (p 1/4): the 2.5th and 97.5th percentiles are 0 and 1
    assert scores.bootstrap_ci([0.0, 1.0], samples=2000) == (0.0, 1.0)


def test_bootstrap_of_a_constant_is_that_constant():
    assert scores.bootstrap_ci([3.5] * 10) == (3.5, 3.5)


def test_bootstrap_matches_the_normal_interval_on_a_large_sample():
    # 200 ones and 200 zeros: mean 0.5, standard error sqrt(0.25 / 400) = 0.025, so about 0.5 ± 1.96 · 0.025 = [0.451, 0.549]
    low, high = scores.bootstrap_ci([1.0] * 200 + [0.0] * 200, samples=4000, seed=1)
    assert low == pytest.approx(0.451, abs=0.008) and high == pytest.approx(0.549, abs=0.008)


def test_bootstrap_is_seeded_and_empty_is_nan():
    assert scores.bootstrap_ci([1.0, 2.0, 7.0], seed=3) == scores.bootstrap_ci([1.0, 2.0, 7.0], seed=3)
    assert all(math.isnan(x) for x in scores.bootstrap_ci([]))
    # the seed is the one the caller gives: the documented resampling, transcribed, with that seed ...
    values = [1.0, 2.0, 7.0, 3.5, 0.25, 9.0, 4.0, 6.5]
    rng = np.random.default_rng(3)
    means = [float(np.mean([values[k] for k in row])) for row in rng.integers(0, len(values), size=(1000, len(values)))]
    assert scores.bootstrap_ci(values, seed=3) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)
    # ... and another seed draws other resamples
    assert scores.bootstrap_ci(values, seed=4) != scores.bootstrap_ci(values, seed=3)


def test_bootstrap_interval_is_95_percent_not_90():
    # 8 zeros and 8 ones: a resample's mean is Binomial(16, 1/2) / 16, with P(X <= 3) = 697/65536 = 0.011,
    # P(X <= 4) = 2517/65536 = 0.038 and P(X <= 5) = 6885/65536 = 0.105. The 2.5th percentile is X = 4
    # (0.25) and by symmetry the 97.5th X = 12 (0.75); a 90% interval would read X = 5 and 11:
    # (0.3125, 0.6875). With 4000 resamples each empirical tail fraction is within about 0.003 (one
    # standard error) of its probability: 0.025 and 0.05 fall clear of the steps, whichever the seed
    for seed in (0, 1, 2):
        assert scores.bootstrap_ci([0.0] * 8 + [1.0] * 8, samples=4000, seed=seed) == (0.25, 0.75)


def test_with_ci_names_the_bounds():
    figures = scores.with_ci("reward_mean", [1.0, 2.0, 3.0], samples=500)
    assert figures["reward_mean"] == 2.0
    assert 1.0 <= figures["reward_mean_ci_low"] <= 2.0 <= figures["reward_mean_ci_high"] <= 3.0


def test_win_outcomes_count_ties_as_half():
    # A vs B per prompt: 2 > 1 win, 1 = 1 tie, 0 < 3 loss, 5 > -1 win -> [1, 0.5, 0, 1], rate 2.5 / 4
    outcomes = scores.win_outcomes([2.0, 1.0, 0.0, 5.0], [1.0, 1.0, 3.0, -1.0])
    assert outcomes == [1.0, 0.5, 0.0, 1.0] and scores.mean(outcomes) == 0.625
    with pytest.raises(ValueError, match="paired"):
        scores.win_outcomes([1.0], [1.0, 2.0])


def test_distinct_n():
    # "a b a" and "a b": unigrams a b a a b -> 2 distinct of 5; bigrams (a b)(b a)(a b) -> 2 of 3
    assert scores.distinct_n(["a b a", "a b"], 1) == pytest.approx(2 / 5)
    assert scores.distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)
    assert math.isnan(scores.distinct_n(["one", "two"], 2))  # no bigram at all


def test_rouge():
    # "the cat sat" vs reference "the cat ran": unigrams 2 of 3 each way -> F1 2/3; bigrams (the cat) 1 of 2 -> 1/2;
    # longest common subsequence "the cat" = 2 of 3 -> 2/3
    out = text_metrics.compute(["rouge"], ["the cat sat"], ["the cat ran"])
    assert out["rouge1"] == [pytest.approx(2 / 3)]
    assert out["rouge2"] == [pytest.approx(1 / 2)]
    assert out["rougeL"] == [pytest.approx(2 / 3)]


def test_bleu():
    # "a b c d e" vs "a b c d f": n-gram precisions 4/5, 3/4, 2/3, 1/2, same length (no brevity penalty):
    # 100 · (0.8 · 0.75 · 0.6667 · 0.5)^(1/4) = 100 · 0.2^(1/4) = 66.87
    assert text_metrics.compute(["bleu"], ["a b c d e"], ["a b c d f"]) == {"bleu": pytest.approx(100 * 0.2 ** 0.25, abs=0.01)}
    assert text_metrics.compute(["bleu"], ["the same words here"], ["the same words here"])["bleu"] == pytest.approx(100.0)


def test_any_metric_evaluate_can_load_is_computed_and_one_it_cannot_is_left_out(tmp_path, caplog):
    """A user's metric script by path (as a hub id resolves when online or cached); an id that cannot load
    here offline is one warning, and the others are still computed."""
    script = tmp_path / "exact.py"
    script.write_text(
        "import datasets\nimport evaluate\n"
        "class Exact(evaluate.Metric):\n"
        "    def _info(self):\n"
        "        return evaluate.MetricInfo(description='', citation='', inputs_description='', features=datasets.Features(\n"
        "            {'predictions': datasets.Value('string'), 'references': datasets.Value('string')}))\n"
        "    def _compute(self, predictions, references):\n"
        "        return {'exact': sum(p == r for p, r in zip(predictions, references)) / len(predictions)}\n")
    with caplog.at_level("WARNING"):
        out = text_metrics.compute([str(script), "no-such-metric-here", "bleu"], ["a b", "c"], ["a b", "d"])
    assert out["exact"] == 0.5 and "bleu" in out
    assert [r.message for r in caplog.records if "no-such-metric-here" in r.message][0].startswith(
        "text metric 'no-such-metric-here' is unavailable here, left out")


def test_best_of_takes_the_highest_of_the_first_n():
    assert scores.best_of([[0.1, 0.9, 5.0], [2.0, 2.0, 1.0]], 2) == [1, 0]  # 5.0 is sample 3, beyond n; a tie keeps the first


def answer(text: str, tokens: int, eos: bool = True) -> Answer:
    return Answer(text, list(range(tokens)), eos)


def test_row_metrics_by_hand():
    base = Row("base", "base", [answer("x y", 3), answer("x", 2, eos=False)], rewards=[0.0, 1.0])
    sft = Row("sft", "sft", [answer("the cat sat", 4), answer("a b", 2)], rewards=[1.0, 1.0], judged=[1.0, None])
    rows = {"base": base, "sft": sft}
    refs = ["the cat ran", None]
    boot = {"samples": 200, "seed": 0}
    f = row_metrics(sft, rows, ["base", "sft"], refs, boot)
    assert f["reward_mean"] == 1.0
    assert f["win_rate_vs_base"] == 0.75  # 1 > 0 wins, 1 = 1 ties: (1 + 0.5) / 2
    assert "win_rate_vs_sft" not in f
    assert f["response_length"] == 3.0 and f["no_eos_frac"] == 0.0
    assert f["rouge1"] == pytest.approx(2 / 3)  # only the first prompt has a reference
    assert f["judge_mean"] == 1.0 and f["judge_errors"] == 1.0
    g = row_metrics(base, rows, ["base", "sft"], refs, boot)
    assert g["win_rate_vs_sft"] == 0.25 and g["no_eos_frac"] == 0.5
    assert g["reward_mean"] == 0.5 and g["reward_mean_finished"] == 0.0  # the cut answer's 1.0 left out
    assert g["distinct_1"] == pytest.approx(2 / 3)  # x y x -> 2 distinct of 3


def test_summary_table_from_sorted_metrics_puts_models_before_best_of_rows():
    from align.eval.report import summary_table

    metrics = {"aligned/reward_mean": 1.0, "aligned_best_of_4/reward_mean": 1.5, "base/reward_mean": 0.25,
               "eval/prompts": 50, "sft/reward_mean": 0.75}
    header, *lines = summary_table(metrics).splitlines()
    assert header.split() == ["metric", "aligned", "base", "sft", "aligned_best_of_4"]
    assert lines[0].split() == ["reward_mean", "1.000", "0.250", "0.750", "1.500"]


def test_pearson_by_hand():
    # x = 1, 2, 3 and y = 2, 4, 5: means 2 and 11/3; Σdxdy = (-1)(-5/3) + 0 + (1)(4/3) = 3,
    # Σdx² = 2, Σdy² = 25/9 + 1/9 + 16/9 = 42/9: r = 3 / sqrt(2 · 42/9) = 0.98198
    assert scores.pearson([1, 2, 3], [2, 4, 5]) == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert math.isnan(scores.pearson([1, 2, 3], [5, 5, 5])) and math.isnan(scores.pearson([1, 2], [3, 4]))


def test_length_matched_prompts_are_within_the_tolerance_of_the_longer():
    # 10 vs 12 differ by 2 <= 0.2 * 12 = 2.4 (matched); 10 vs 13 by 3 > 2.6 (not); 1 vs 2 by 1 <= max(1, 0.4) (matched)
    assert scores.length_matched([10, 10, 1, 40], [12, 13, 2, 30], 0.2) == [0, 2]


def test_a_win_bought_with_length_disappears_when_lengths_match():
    # A wins prompts 0 and 1 with answers twice as long, and loses prompt 2 at equal length:
    # win rate 2/3, but 0 over the one prompt of like length; and A's reward rises with its length (r > 0)
    a = Row("a", "a", [answer("x", 20), answer("x", 30), answer("x", 8)], rewards=[1.0, 2.0, -1.0])
    b = Row("b", "b", [answer("y", 10), answer("y", 15), answer("y", 8)], rewards=[0.0, 0.0, 0.0])
    figures = row_metrics(a, {"a": a, "b": b}, ["b"], [None] * 3, {"samples": 200, "seed": 0})
    assert figures["win_rate_vs_b"] == pytest.approx(2 / 3)
    assert figures["win_rate_vs_b_length_matched"] == 0.0 and figures["length_matched_prompts_vs_b"] == 1.0
    assert figures["reward_length_corr"] == pytest.approx(scores.pearson([1.0, 2.0, -1.0], [20, 30, 8]))
