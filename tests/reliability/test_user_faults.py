"""Faults in what the user brings besides data: a reward function that raises or returns no number,
a reward module in the working directory, a model that ships its own code, a reward model saved as a
pickle. Each ends in one message (exit 2, no traceback) that names the culprit."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from align.cli import cli
from align.core import modeling
from align.core.callables import RewardFunctionError, load_callable, reward_value
from align.core.errors import AlignError
from tests.reliability import faulty_rewards, stages

FAULTY = "tests.reliability.faulty_rewards"


def refused(result, *expected: str) -> str:
    """Exit 2 with one `error:` line holding each of `expected`, and no traceback; returns the line."""
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output[-2000:]}\n{result.exception!r}"
    assert "Traceback" not in output, output[-2000:]
    errors = re.findall(r"error: [^\n]*", output)  # progress bars leave no newline before it
    assert len(errors) == 1, output[-2000:]
    for text in expected:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def status(out) -> dict:
    return json.loads((out / "status.json").read_text())


# ---------------------------------------------------------------- the value a reward function returns

@pytest.mark.parametrize(("value", "expected"), [
    (3, 3.0), (True, 1.0), (0.25, 0.25), (np.float32(0.5), 0.5), (np.int64(-2), -2.0), (np.bool_(True), 1.0),
    (torch.tensor(1.5), 1.5), (torch.tensor([2.5]), 2.5), (np.array([[4]]), 4.0),
], ids=lambda v: type(v).__name__)
def test_reward_value_takes_one_number_of_any_kind(value, expected):
    assert reward_value(lambda p, r: value, "m:f", "prompt", "response") == expected


def test_a_non_finite_reward_passes_through_for_the_guards():
    assert math.isnan(reward_value(lambda p, r: float("nan"), "m:f", "prompt", "response"))


BAD_RETURNS = [
    ("raises", "raised ValueError: cannot parse the answer"),
    ("returns_none", "returned None, not a number"),
    ("returns_str", "returned a str ('0.5'), not one number"),
    ("returns_list", "returned a list, not one number"),
    ("returns_tensor", "returned a Tensor of shape (2,), not one number"),
]


@pytest.mark.parametrize(("name", "problem"), BAD_RETURNS, ids=[n for n, _ in BAD_RETURNS])
def test_reward_value_names_the_function_the_fault_and_the_response(name, problem):
    spec = f"{FAULTY}:{name}"
    with pytest.raises(RewardFunctionError) as caught:
        reward_value(getattr(faulty_rewards, name), spec, "What is 2+2?", "4, I think")
    assert str(caught.value) == f"reward function {spec}: {problem}, scoring the response '4, I think'"


def test_a_long_response_is_clipped_in_the_message():
    with pytest.raises(RewardFunctionError, match=r"scoring the response 'x{80}'\.\.\. \(5000 characters\)$"):
        reward_value(faulty_rewards.returns_none, "m:f", "prompt", "x" * 5000)


def test_grpo_and_rloo_reward_functions_are_checked_too():
    from align.prefs.train import RuleFunction

    rule = RuleFunction(f"{FAULTY}:returns_list")
    prompts = [[{"role": "user", "content": "Say a number"}]]
    completions = [[{"role": "assistant", "content": "seven"}]]
    with pytest.raises(RewardFunctionError, match=r"returns_list: returned a list, not one number, "
                                                  r"scoring the response 'seven'"):
        rule(prompts, completions)
    digits = RuleFunction("tests.ppo.toy_reward:digit_count")
    assert digits(prompts, [[{"role": "assistant", "content": "7 8"}]]) == [2.0]


def ppo(tiny_model_dir, out, *extra: str, resume: bool = False):
    settings = ["training.updates=2", "training.save_steps=1", "training.sample_steps=0", "training.ppo_epochs=1", *extra]
    argv = stages.argv("ppo", tiny_model_dir, out, out, *settings)[3:]  # [python, -m, align] dropped
    with stages.one_thread():
        return CliRunner().invoke(cli, argv + (["--resume"] if resume else []))


@pytest.mark.parametrize(("name", "problem"), BAD_RETURNS, ids=[n for n, _ in BAD_RETURNS])
def test_ppo_stops_on_a_faulty_reward_function_with_one_message(name, problem, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(stages.ROOT)  # `tests.…` imports from here
    out = tmp_path / "run"
    spec = f"{FAULTY}:{name}"
    line = refused(ppo(tiny_model_dir, out, f"reward.function={spec}"), f"reward function {spec}: {problem}",
                   "scoring the response '", "--resume continues the run from its newest checkpoint")
    assert status(out)["state"] == "failed"
    assert status(out)["error"] == "RewardFunctionError: " + line.removeprefix("error: ")


def test_a_ppo_run_stopped_by_its_reward_function_resumes_once_the_function_is_fixed(tiny_model_dir, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.chdir(stages.ROOT)
    monkeypatch.setitem(faulty_rewards.STATE, "calls", 0)
    monkeypatch.setitem(faulty_rewards.STATE, "broken", True)
    out = tmp_path / "run"
    function = f"reward.function={FAULTY}:fails_after_first_rollout"
    refused(ppo(tiny_model_dir, out, function), "fails_after_first_rollout: raised KeyError: 'answer'")
    assert status(out)["state"] == "failed" and (out / "checkpoints" / "checkpoint-1").is_dir()
    faulty_rewards.STATE["broken"] = False
    result = ppo(tiny_model_dir, out, function, resume=True)
    assert result.exit_code == 0, result.output[-2000:]
    assert status(out)["state"] == "done" and [r["step"] for r in stages.step_records(out)] == [1, 2]


# ---------------------------------------------------------------- a reward module in the working directory

def test_a_reward_module_in_the_working_directory_is_found_after_installed_ones(tmp_path, monkeypatch):
    name = "align_test_cwd_reward"
    (tmp_path / f"{name}.py").write_text("def f(prompt, response):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    # as the `align` console script starts: neither '' nor the working directory on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        assert load_callable(f"{name}:f")("p", "r") == 1.0
        assert sys.path[-1] == str(tmp_path)  # last: a user's file never shadows an installed package
    finally:
        sys.modules.pop(name, None)


def test_a_module_nowhere_still_fails_and_leaves_sys_path_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    with pytest.raises(AlignError, match="'nowhere_module:f': cannot import module 'nowhere_module'"):
        load_callable("nowhere_module:f")
    assert sys.path == before


# ---------------------------------------------------------------- a model that ships its own code

@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json"])
def test_a_model_with_custom_code_is_refused_before_the_output_dir_is_written(file, tiny_model_dir, tmp_path,
                                                                               no_models):
    model = shutil.copytree(tiny_model_dir, tmp_path / "custom-model")
    body = json.loads((model / file).read_text())
    if file.startswith("tokenizer"):
        # shipped code and no class transformers has: it would need the code to load
        body.update(auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")
    else:
        body.update(auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}, model_type="evil")
    (model / file).write_text(json.dumps(body))
    out = tmp_path / "out"
    argv = stages.argv("sft", model, tmp_path, out)[3:]
    refused(CliRunner().invoke(cli, argv),
            f"{model / file}: auto_map needs model.trust_remote_code=true (align runs no code shipped with a model")
    assert not out.exists()
    modeling.check_model(modeling.ModelConfig(name=str(model), trust_remote_code=True))  # the user's choice


def test_a_model_whose_auto_map_transformers_need_not_use_loads_as_before(tiny_model_dir, tmp_path):
    """A local copy of a model transformers supports itself (Phi-3 keeps its auto_map) runs none of
    the shipped code with remote code off: nothing to refuse."""
    model = shutil.copytree(tiny_model_dir, tmp_path / "known-model")
    for file, entry in (("config.json", {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}),
                        ("tokenizer_config.json", {"AutoTokenizer": ["tokenization_x.XTokenizer", None]})):
        body = json.loads((model / file).read_text())
        (model / file).write_text(json.dumps({**body, "auto_map": entry}))
    modeling.check_model(modeling.ModelConfig(name=str(model)))
    assert modeling.load_tokenizer(str(model)) is not None


# ---------------------------------------------------------------- a reward model saved as a pickle

def pickled_reward_model(tmp_path, tiny_model_dir):
    """A reward stage directory as `align reward` lays it out, but with adapter_model.bin for weights."""
    weights = tmp_path / "rm" / "adapter"
    weights.mkdir(parents=True)
    (weights / modeling.BASE_FILE).write_text(json.dumps(
        {"name": str(tiny_model_dir), "path": str(tiny_model_dir), "quantization": "none", "tuning": "lora"}))
    (weights / "adapter_config.json").write_text("{}")
    (weights / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    return tmp_path / "rm"


def test_weights_dir_refuses_a_reward_model_without_safetensors(tiny_model_dir, tmp_path):
    from align.reward.score import HEAD_FILE, weights_dir

    rm = pickled_reward_model(tmp_path, tiny_model_dir)
    with pytest.raises(AlignError) as caught:
        weights_dir(rm)
    assert str(caught.value) == (f"{rm / 'adapter'}: no safetensors weights; align loads weights only from "
                                 f"safetensors (a pickled .bin is refused)")
    for name in ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", HEAD_FILE):
        (rm / "adapter" / name).write_text("{}")
        assert weights_dir(rm) == rm / "adapter", name
        (rm / "adapter" / name).unlink()


def test_ppo_refuses_a_pickled_reward_model_before_the_output_dir_is_written(tiny_model_dir, tmp_path, no_models,
                                                                             monkeypatch):
    monkeypatch.chdir(stages.ROOT)
    rm = pickled_reward_model(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    result = ppo(tiny_model_dir, out, f"reward.model={rm}", "reward.function=null")
    refused(result, f"{rm / 'adapter'}: no safetensors weights; align loads weights only from safetensors "
                    f"(a pickled .bin is refused)")
    assert not out.exists()
