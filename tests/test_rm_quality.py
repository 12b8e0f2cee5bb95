"""bench/rm_quality.py --tiny: the reward-model comparison's whole code path (conversion, split, both
trainers, scoring, figures) on the tiny model and the fixtures, so the benchmark cannot rot (issue #20)."""

import json

import pytest

from bench.rm_quality import CONTENDERS, PROFILE_VARIANTS
from tests.bench_runs import run_bench
FIGURES = ("steps", "pairs_trained", "train_s", "sec_per_step", "sec_per_pair", "cpu_s_per_pair", "peak_rss_mb",
           "train_peak_rss_mb", "padded_tokens", "real_tokens")


def test_tiny_run_has_every_figure_for_both_contenders(tmp_path):
    """Without dropout, TRL started from ours' initial weights and pair order takes ours' steps: the same losses and
    the same trained rewards (what is left between the two on real data is the dropout masks' chance)."""
    proc = run_bench("rm_quality", "--tiny", "--set", "model.lora.dropout=0", "--out", str(tmp_path),
                     "--workdir", str(tmp_path / "work"))
    body = json.loads((tmp_path / "rm_quality-tiny.json").read_text())
    assert set(body["results"]) == {"hh", "oasst"}
    for task, line in body["results"].items():
        data = body["data"][task]
        # the split: every held-out group fits both trainers or is long, and the seed holds out one of each
        assert data["heldout_fit"] + data["heldout_long"] == data["heldout"]
        assert data["heldout_fit"] >= 1 and data["heldout_long"] >= 1, task
        assert data["train"] >= 1
        # TRL given align's text would see the same tokens, bar what its own template path adds at the end
        assert data["template_check"]["differ_otherwise"] == 0
        for contender in CONTENDERS:
            figures = line[contender]
            for name in FIGURES:
                assert figures[name] > 0, (task, contender, name)
            assert figures["pairs_trained"] == data["train_pairs"]
            subsets = ("fit", "long", "all")
            kinds = ("accuracy", "top1") if task == "oasst" else ("accuracy",)
            for kind in kinds:
                for when in ("before", "after"):
                    for subset in subsets:
                        value = figures[f"{kind}_{when}_{subset}"]
                        assert 0 <= value <= 1, (task, contender, kind, when, subset, value)
        checks = line["checks"]
        # each saved directory reads back as the model scored in memory, and TRL trained on every pair ours did
        assert checks["saved_groups_checked"] == data["heldout"]
        for contender in CONTENDERS:
            assert checks[f"{contender}_saved_max_abs_diff"] < 1e-4, contender
        assert checks["trl_pairs_trained_equals_ours"] is True
        # the bench's pair accuracy, on the stage's own scores, is the stage's eval/accuracy
        assert checks["bench_accuracy_of_stage_scores"] == checks["ours_stage_eval_accuracy"]
        assert checks["bench_accuracy_of_stage_scores_before"] == checks["ours_stage_eval_before_accuracy"]
        assert checks["before_max_abs_diff_ours_trl"] < 1e-5
        if task == "hh":  # a pair a step for both (oasst: ours a ranking a step, TRL a pair)
            losses = {c: [e["loss"] for e in line["raw"][c]["loss_log"]] for c in CONTENDERS}
            assert len(losses["ours"]) == 2 and losses["ours"] == pytest.approx(losses["trl"], rel=1e-5), losses
            assert checks["after_max_abs_diff_ours_trl"] < 1e-4
    for target in ("accuracy_ours_ge_trl_minus_0.01", "time_per_pair_ours_le_trl", "peak_rss_ours_le_trl"):
        assert isinstance(body["targets"][target]["met"], bool)
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [p["workload"] for p in printed] == ["rm_quality_hh", "rm_quality_oasst"]


def test_tiny_profile_compares_the_layouts(tmp_path):
    """--profile: the stage's whole-group micro-batches run every token once; the layout from before them
    (completions cut by length) runs every token twice; every heap setting once (a process each)."""
    variants = ["shipped", "completions_cut_default_heap", "shipped_mmap_2mb", "shipped_trim_each_backward"]
    assert {PROFILE_VARIANTS[v][1] for v in variants} == {heap for _, heap in PROFILE_VARIANTS.values()}
    run_bench("rm_quality", "--tiny", "--profile", "--profile-reps", "1", "--profile-variants", *variants,
              "--out", str(tmp_path), "--workdir", str(tmp_path / "work"))
    results = json.loads((tmp_path / "rm_quality-profile-tiny.json").read_text())["results"]
    assert set(results) == set(variants)
    for name, figures in results.items():
        assert figures["cpu_s"] > 0 and figures["step_peak_rss_mb"] > 0, name
        assert figures["micro_batches"] >= 2, name  # the tiny budget cuts the batch
        twice = figures["nograd_padded_tokens"]
        assert twice == (figures["padded_tokens"] if name.startswith("completions_cut") else 0), name


def test_the_paired_difference_counts_each_pair_once_and_its_interval_follows_the_discordant_pairs(tmp_path):
    """bench.rm_quality's accuracy comparison: on the same held-out pairs, ours minus TRL's is (ours only - TRL only)
    / n, with the normal interval of a mean of +1/0/-1 outcomes; --seeds pools the tallies of its splits, and --pool
    the splits of several runs."""
    import math

    from bench.rm_quality import paired_difference, paired_tally, pooled
    from align.reward.formats import Group

    pair = Group(prompt=({"role": "user", "content": "q"},), completions=("a", "b"), ranks=(0, 1), margin=None,
                 source="t")
    ranking = Group(prompt=({"role": "user", "content": "r"},), completions=("a", "b", "c"), ranks=(0, 1, 1),
                    margin=None, source="t")  # a tie: two pairs, not three
    groups = [pair, pair, ranking, pair]
    ours = [[1.0, 0.0], [0.0, 1.0], [2.0, 1.0, 3.0], [1.0, 0.0]]
    trl = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0]]
    tally = paired_tally(groups, ours, trl, [True, True, True, False])  # the last group is long: left out
    assert tally == {"both": 1, "ours_only": 1, "trl_only": 1, "neither": 1}
    figures = paired_difference({"both": 50, "ours_only": 6, "trl_only": 2, "neither": 42})
    d = 4 / 100
    half = 1.96 * math.sqrt((8 / 100 - d * d) / 100)
    assert figures["difference"] == d and figures["pairs"] == 100
    assert figures["interval_95"] == [round(d - half, 4), round(d + half, 4)]

    def split(seed, tally, ours_acc, trl_acc):
        line = {c: {"accuracy_before_fit": 0.5, "accuracy_after_fit": a, "sec_per_pair": 1.0 + seed,
                    "cpu_s_per_pair": 1.0, "peak_rss_mb": 100.0} for c, a in (("ours", ours_acc), ("trl", trl_acc))}
        line["paired_fit"] = paired_difference(tally)
        return {"split_seed": seed, "results": {"hh": line}}

    both = pooled([split(0, {"both": 3, "ours_only": 0, "trl_only": 1, "neither": 0}, 0.75, 1.0),
                   split(1, {"both": 1, "ours_only": 3, "trl_only": 0, "neither": 2}, 0.6667, 0.1667)])
    # pooled over the 10 pairs: ours 7/10, TRL 5/10, not the mean of the splits' own accuracies (0.708, 0.583)
    assert both["paired_fit"]["difference"] == 0.2
    assert both["pooled_and_mean"]["ours"]["accuracy_after_fit"] == 0.7
    assert both["pooled_and_mean"]["trl"]["accuracy_after_fit"] == 0.5
    assert both["pooled_and_mean"]["ours"]["sec_per_pair"] == 1.5  # the mean of the splits' seconds
    assert both["targets"]["accuracy_ours_ge_trl_minus_0.01"]["met"] is True
    assert [s["difference"] for s in both["by_split"]] == [-0.25, 0.5]

    # --pool: splits run in separate processes pool as one run of them would; other settings or a repeated split refuse
    from bench.rm_quality import pool_files

    def run_file(name, splits, **settings):
        body = {"benchmark": "rm_quality", "versions": {}, "machine": {}, "splits": splits,
                "settings": {"split_seed": splits[0]["split_seed"], "split_seeds": [s["split_seed"] for s in splits],
                             "set": [], **settings}}
        path = tmp_path / name
        path.write_text(json.dumps(body))
        return path

    first = split(0, {"both": 3, "ours_only": 0, "trl_only": 1, "neither": 0}, 0.75, 1.0)
    second = split(1, {"both": 1, "ours_only": 3, "trl_only": 0, "neither": 2}, 0.6667, 0.1667)
    a, b = run_file("a.json", [first]), run_file("b.json", [second])
    merged = pool_files([a, b])
    assert merged["pooled"] == both and merged["settings"]["split_seeds"] == [0, 1]
    with pytest.raises(SystemExit, match="a split comes twice"):
        pool_files([a, a])
    with pytest.raises(SystemExit, match=r"c.json: settings differ .*: set"):
        pool_files([a, run_file("c.json", [second], set=["training.learning_rate=1e-3"])])
