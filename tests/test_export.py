"""`align export`: the merged, standalone model answers and scores as the adapter model align trained."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from align.cli import cli
from align.core import modeling
from align.sft.train import train
from tests.sft.test_train import tiny_config

PROMPTS = ["What is 7 + 5?", "Name a colour.", "Say hello.", "What is 3 x 4?", "Spell cat.", "Count to three.",
           "What is 10 - 6?", "Give a word for happy."]


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "sft"
    train(tiny_config(tiny_model_dir, out, "training.max_steps=4", "training.epochs=1", "data.eval_fraction=0"))
    return out


def prompt_ids(tokenizer) -> list[torch.Tensor]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"] for p in PROMPTS]


def test_the_merged_model_answers_and_scores_as_the_adapter_model(sft_run, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = CliRunner().invoke(cli, ["export", str(sft_run), "-o", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert not hasattr(merged, "peft_config") and merged.dtype == torch.float32
    assert "peft" not in json.dumps(json.loads((tmp_path / "merged" / "config.json").read_text()))

    # align's adapter model: the NF4 base with the LoRA adapter on it, as every stage loads it
    config = modeling.ModelConfig(name=str(tiny_model_dir), quantization="nf4")
    adapter = modeling.load_adapter(modeling.load_base(config, modeling.load_tokenizer(str(sft_run / "adapter"))),
                                    str(sft_run / "adapter"), trainable=False).eval()
    base_only = modeling.load_base(modeling.ModelConfig(name=str(tiny_model_dir), quantization="nf4"),
                                   modeling.load_tokenizer(str(tiny_model_dir))).eval()
    moved = 0.0
    with torch.no_grad():
        for ids in prompt_ids(tokenizer):
            ours = adapter.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            theirs = merged.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            assert torch.equal(ours, theirs)
            logp = [m(input_ids=ours).logits.log_softmax(-1) for m in (adapter, merged, base_only)]
            torch.testing.assert_close(logp[1], logp[0], atol=1e-4, rtol=0)
            moved = max(moved, (logp[0] - logp[2]).abs().max().item())
    assert moved > 1e-2  # the adapter changed the model: the merge carried something


def test_a_run_exports_its_aligned_policy_and_refuses_what_is_not_a_model(sft_run, tmp_path):
    from align.export import weights_of

    run = tmp_path / "run"
    run.mkdir()
    (run / "sft").symlink_to(sft_run, target_is_directory=True)
    (run / "manifest.json").write_text(json.dumps({"stages": {"sft": {"status": "done"}, "ppo": {"status": "failed"}}}))
    picked = weights_of(run)
    assert picked.directory == run / "sft" / "adapter" and not picked.reward
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: ")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["export", str(sft_run), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
