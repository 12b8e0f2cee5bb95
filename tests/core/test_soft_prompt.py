"""A prompt-tuned model, run as virtual tokens (align.core.soft_prompt), answers as its soft prompt says: one
initialised from the embeddings of a text gives exactly the greedy answers and log-probs that text in the
prompt gives."""

from __future__ import annotations

import math

import pytest
import torch

TEXT = "Answer the question briefly."
PROMPTS = [[{"role": "user", "content": "What is 7 + 5?"}], [{"role": "user", "content": "Name a colour."}]]


@pytest.fixture(scope="module")
def soft_prompt_dir(tiny_model_dir, tmp_path_factory):
    """peft's prompt-tuning adapter on the tiny model, its soft prompt initialised from TEXT's embeddings."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    n = len(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n, prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=TEXT, tokenizer_name_or_path=str(tiny_model_dir)))
    out = tmp_path_factory.mktemp("soft-prompt")
    model.save_pretrained(out)
    return out


def views(tiny_model_dir, soft_prompt_dir):
    from align.eval.models import ModelPool, resolve

    pool = ModelPool({"tuned": resolve("tuned", str(soft_prompt_dir)), "base": resolve("base", str(tiny_model_dir))},
                     "none")
    return pool.view("tuned"), pool.view("base")


def test_a_soft_prompt_from_a_text_answers_as_the_text_in_the_prompt_does(tiny_model_dir, soft_prompt_dir):
    from align.core.records import Prompt
    from align.eval.config import GenerationSettings
    from align.eval.generate import answer, prompt_text

    tuned, base = views(tiny_model_dir, soft_prompt_dir)
    assert len(tuned.prefix) == len(base.tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    settings = GenerationSettings(max_new_tokens=12, samples_per_prompt=0)
    got = [a.token_ids for a in answer(tuned, [Prompt(tuple(m), None, 'test') for m in PROMPTS], settings, 0).greedy]
    text_ids = base.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    expected = []
    with base.active() as model:
        for messages in PROMPTS:
            ids = torch.tensor([text_ids + base.tokenizer(prompt_text(base.tokenizer, messages),
                                                          add_special_tokens=False)["input_ids"]])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                 eos_token_id=base.eos_ids, pad_token_id=base.tokenizer.pad_token_id)[0, ids.shape[1]:]
            expected.append(out.tolist()[:len(got[len(expected)])])
    assert got == expected
    assert all(t < len(base.tokenizer) for answer_tokens in got for t in answer_tokens)  # no virtual token comes out


def test_its_log_probs_are_those_of_the_text_in_the_prompt(tiny_model_dir, soft_prompt_dir):
    from align.eval.likelihood import answers_logprobs, continuation_logprobs, perplexity

    tuned, base = views(tiny_model_dir, soft_prompt_dir)
    text_ids = base.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    contexts, answers = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13]]
    assert continuation_logprobs(tuned, contexts, answers) == pytest.approx(
        continuation_logprobs(base, [text_ids + c for c in contexts], answers), abs=1e-5)
    got = answers_logprobs(tuned, contexts, [[a] for a in answers])
    expected = answers_logprobs(base, [text_ids + c for c in contexts], [[a] for a in answers])
    assert [v for row in got for v in row] == pytest.approx([v for row in expected for v in row], abs=1e-5)
    document = "Rivers carry water to the sea."
    window = base.tokenizer(document)["input_ids"]  # its first token is context, the rest are predicted
    after_text = continuation_logprobs(base, [text_ids + window[:1]], [window[1:]])[0]
    assert perplexity(tuned, [document], 64) == pytest.approx(math.exp(-after_text / (len(window) - 1)), rel=1e-4)


def test_the_model_cards_peft_only_lines_answer_as_align_does(tiny_model_dir, soft_prompt_dir):
    """The loading lines a prompt-tuned adapter's model card shows (peft and transformers alone) give the
    greedy answer align's evaluation gives."""
    from align.core.model_card import SOFT_PROMPT_LOADING
    from align.core.records import Prompt
    from align.eval.config import GenerationSettings
    from align.eval.generate import answer

    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(soft_prompt_dir)  # as a stage's adapter dir holds it
    scope = {"DIR": str(soft_prompt_dir), "messages": PROMPTS[0]}
    exec(SOFT_PROMPT_LOADING.replace("max_new_tokens=64", "max_new_tokens=12"), scope)
    tuned, _ = views(tiny_model_dir, soft_prompt_dir)
    ours = answer(tuned, [Prompt(tuple(PROMPTS[0]), None, "test")], GenerationSettings(max_new_tokens=12,
                                                                                      samples_per_prompt=0), 0)
    assert scope["answer"].strip() == ours.greedy[0].text
