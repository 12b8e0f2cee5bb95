"""Log-likelihoods, perplexity and multiple choice: hand-computed on fixed logits, and on the tiny
model against a plain unbatched forward pass."""

from __future__ import annotations

import json
import math

import pytest
import torch

from align.core.errors import DataError
from align.eval import benchmarks, likelihood
from align.eval.models import ModelPool, resolve


def test_uniform_logits_give_a_perplexity_of_the_vocabulary_size():
    # every token has p = 1/8: each predicted token costs log 8; the padded second window predicts one token
    logits = torch.zeros(2, 4, 8)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    nll, count = likelihood.nll_sum(logits, ids, mask)
    assert count == 4 and nll == pytest.approx(4 * math.log(8))
    assert math.exp(nll / count) == pytest.approx(8.0)


def test_token_logprobs_divide_by_the_temperature():
    # logits [0, 2 ln 3] at T = 2 are [0, ln 3]: p(token 1) = 3 / (1 + 3)
    logits = torch.tensor([[[0.0, 2 * math.log(3)]]])
    assert likelihood.token_logprobs(logits, torch.tensor([[1]]), temperature=2.0).item() == pytest.approx(math.log(0.75))


@pytest.fixture(scope="module")
def tiny_view(tiny_model_dir):
    pool = ModelPool({"m": resolve("m", str(tiny_model_dir))}, "none")
    return pool.view("m")


def plain_logprob(view, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from one unpadded forward pass."""
    with view.active() as model, torch.no_grad():
        logits = model(input_ids=torch.tensor([context + continuation])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    return sum(logp[len(context) - 1 + t, token].item() for t, token in enumerate(continuation))


def test_batched_padded_logprobs_match_one_sequence_at_a_time(tiny_view):
    # different lengths in one batch: left padding on the contexts, right padding on the continuations
    contexts = [[5, 6, 7, 8, 9, 10], [11, 12]]
    continuations = [[20], [21, 22, 23]]
    batched = likelihood.continuation_logprobs(tiny_view, contexts, continuations)
    for got, context, continuation in zip(batched, contexts, continuations):
        assert got == pytest.approx(plain_logprob(tiny_view, context, continuation), abs=1e-4)


def test_perplexity_is_exp_of_the_models_own_loss(tiny_view):
    text = "Rivers carry water to the sea, and the sea gives it back as rain."
    ids = tiny_view.tokenizer(text)["input_ids"]
    with tiny_view.active() as model, torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert likelihood.perplexity(tiny_view, [text], max_length=512) == pytest.approx(math.exp(loss), rel=1e-4)


def test_multiple_choice_files(tmp_path, write_jsonl):
    csv = tmp_path / "mmlu.csv"
    csv.write_text('What is 2 + 2?,3,4,5,6,B\n"A, with a comma?",w,x,y,z,d\n')
    questions = benchmarks.read_questions(csv)
    assert [q.answer for q in questions] == [1, 3] and questions[1].question == "A, with a comma?"
    headed = tmp_path / "headed.csv"
    headed.write_text("question,A,B,C,D,answer\nQ?,a,b,c,d,A\n")
    assert len(benchmarks.read_questions(headed)) == 1
    jsonl = write_jsonl("mmlu.jsonl", [{"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 2, "subject": "x"}])
    assert benchmarks.read_questions(jsonl)[0].answer == 2


def test_bad_multiple_choice_rows_are_named(tmp_path, write_jsonl):
    bad = tmp_path / "bad.csv"
    bad.write_text("Q?,a,b,c,d,E\nQ?,a,b\n")
    with pytest.raises(DataError) as e:
        benchmarks.read_questions(bad)
    assert 'bad.csv:1: field "answer": expected A-D or 0-3' in str(e.value) and "bad.csv:2: expected 6 columns" in str(e.value)
    jsonl = write_jsonl("bad.jsonl", [{"question": "Q?", "choices": ["a", "b"], "answer": 0}])
    with pytest.raises(DataError, match='bad.jsonl:1: field "choices": expected four strings'):
        benchmarks.read_questions(jsonl)


def test_the_multiple_choice_file_through_lm_eval_scores_as_a_hand_count(tiny_view, tmp_path):
    """The local lm-eval task: MMLU's zero-shot prompt, then " A" ... " D"; the likeliest letter is the pick.
    Half the answers are set to the pick a plain forward pass makes, so the hand count is 0.5."""
    from align.eval import harness

    questions = [benchmarks.Question(f"What is {i} + {i}?", (str(i), str(2 * i), str(i + 1), str(3 * i)), 0, "x")
                 for i in range(1, 7)]
    tokenizer = tiny_view.tokenizer
    letters = [tokenizer(" " + letter, add_special_tokens=False)["input_ids"] for letter in benchmarks.LETTERS]
    picks = []
    for q in questions:
        text = benchmarks.MC_HEADER + "\n".join([q.question] + [f"{l}. {c}" for l, c in zip(benchmarks.LETTERS, q.choices)])
        context = tokenizer(text + "\nAnswer:", add_special_tokens=False)["input_ids"]
        picks.append(max(range(4), key=lambda k: plain_logprob(tiny_view, context, letters[k])))
    questions = [q if i % 2 else benchmarks.Question(q.question, q.choices, picks[i], q.source)
                 for i, q in enumerate(questions)]
    hand = [1.0 if q.answer == p else 0.0 for q, p in zip(questions, picks)]
    assert sum(hand) >= 3  # the even ones; the odd ones may be right by chance
    manager = harness.task_manager(harness.write_local_task(questions, tmp_path / "tasks"))
    got = harness.per_document(tiny_view, [harness.LOCAL_TASK], manager, limit=0, batch_size=4)
    assert got == {harness.LOCAL_TASK: hand}


def test_documents(tmp_path, write_jsonl):
    text = tmp_path / "general.txt"
    text.write_text("One paragraph\nstill one.\n\n\nTwo.\n")
    assert benchmarks.read_documents(text) == ["One paragraph\nstill one.", "Two."]
    assert benchmarks.read_documents(write_jsonl("t.jsonl", [{"text": "a"}, {"text": "b"}])) == ["a", "b"]
    with pytest.raises(DataError, match='t2.jsonl:1: field "text"'):
        benchmarks.read_documents(write_jsonl("t2.jsonl", [{"body": "a"}]))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no text"):
        benchmarks.read_documents(empty)
    assert json.dumps(benchmarks.read_documents(text))  # plain strings


def test_shared_prompt_cache_gives_the_same_answer_logprobs(tiny_view):
    # prompts of different lengths (left padding), answers of different lengths (right padding), 3 per prompt
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    answers = [[[20], [21, 22], [23, 24, 25]], [[26, 27], [28], [29, 30, 31, 32]], [[33], [34], [35, 36]]]
    shared = likelihood.answers_logprobs(tiny_view, prompts, answers, temperature=0.7, batch_size=4)
    plain = likelihood.continuation_logprobs(tiny_view, [p for p, group in zip(prompts, answers) for _ in group],
                                             [a for group in answers for a in group], temperature=0.7)
    assert [x for row in shared for x in row] == pytest.approx(plain, abs=1e-4)


def test_a_prefix_shared_by_every_row_runs_once_and_changes_nothing(tiny_view):
    from align.core.prefix import common_prefix

    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 11], [5, 6, 12, 13, 14, 15]]
    assert common_prefix(prompts) == 2 and common_prefix([[1, 2], [1, 2]]) == 1  # each row keeps one token
    answers = [[[20], [21, 22]], [[23, 24, 25], [26]], [[27], [28, 29]]]
    shared = likelihood.answers_logprobs(tiny_view, prompts, answers, temperature=0.7, batch_size=6)
    plain = [[plain_logprob_t(tiny_view, p, a, 0.7) for a in group] for p, group in zip(prompts, answers)]
    assert sum(shared, []) == pytest.approx(sum(plain, []), abs=1e-4)


def plain_logprob_t(view, context, continuation, temperature):
    with view.active() as model, torch.no_grad():
        logits = model(input_ids=torch.tensor([context + continuation])).logits[0]
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return sum(logp[len(context) - 1 + t, token].item() for t, token in enumerate(continuation))


def test_reward_scores_with_a_shared_prefix_match_the_reward_models_own(eval_dirs):
    from align.eval.prefix import reward_scores
    from align.reward.score import RewardModel, conversation_text

    reward_model = RewardModel.load(eval_dirs["reward"])
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    texts = [conversation_text(reward_model.tokenizer, prompt, answer) for answer in ("4", "2 + 2 = 4.", "five, I think")]
    one_by_one = [reward_model.score_texts([t]).item() for t in texts]
    # both batch by length (longest first), so each must put the scores back in the texts' order
    assert reward_model.score_texts(texts, batch_size=2).tolist() == pytest.approx(one_by_one, abs=1e-4)
    assert reward_scores(reward_model, texts, batch_size=2).tolist() == pytest.approx(one_by_one, abs=1e-4)
    assert len(set(round(s, 4) for s in one_by_one)) == 3  # distinct scores, or a mix-up would go unseen
