"""pairs_to_kto: preferences and rankings -> TRL KTOTrainer's unpaired rows, checked by hand."""

from __future__ import annotations

from align.convert import pairs_to_kto
from align.core.records import Preference, Ranking

Q1 = ({"role": "user", "content": "Capital of France?"},)
Q2 = ({"role": "user", "content": "Name a prime."},)


def row(prompt, text, label):
    return {"prompt": list(prompt), "completion": [{"role": "assistant", "content": text}], "label": label}


def test_a_preference_gives_one_desirable_and_one_undesirable_row():
    # as TRL's unpair_preference_dataset: chosen -> label True, rejected -> label False
    rows = pairs_to_kto([Preference(Q1, "Paris.", "Lyon.", margin=None, source="p.jsonl:1")])
    assert rows == [row(Q1, "Paris.", True), row(Q1, "Lyon.", False)]


def test_a_ranking_gives_its_best_as_desirable_its_worst_as_undesirable_and_drops_the_middle():
    # ranks 1, 0, 2, 2: "4" (rank 0) is best; "9" and "1" tie for worst (2); "2" (rank 1) sits between.
    # Every pair would give 5 pairs -> 10 rows, with "2" labelled both True (over "9", "1") and False (under "4").
    ranking = Ranking(Q2, ("2", "4", "9", "1"), (1, 0, 2, 2), source="r.jsonl:1")
    assert pairs_to_kto([ranking]) == [row(Q2, "4", True), row(Q2, "9", False), row(Q2, "1", False)]


def test_a_two_way_ranking_is_a_preference_and_groups_keep_their_order():
    preference = Preference(Q1, "Paris.", "Lyon.", margin=None, source="p.jsonl:1")
    # rejected listed first: rank, not position, decides the label
    ranking = Ranking(Q1, ("Lyon.", "Paris."), (1, 0), source="r.jsonl:1")
    tie_at_top = Ranking(Q2, ("2", "3", "4"), (0, 0, 1), source="r.jsonl:2")
    assert pairs_to_kto([ranking]) == pairs_to_kto([preference])
    assert pairs_to_kto([preference, tie_at_top]) == [
        row(Q1, "Paris.", True), row(Q1, "Lyon.", False),
        row(Q2, "2", True), row(Q2, "3", True), row(Q2, "4", False)]
