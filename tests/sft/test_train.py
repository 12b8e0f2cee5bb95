"""SFT on the tiny model: the eval loss falls, outputs follow the contract, resume continues."""

from __future__ import annotations

import json

import pytest
import yaml

from align.core import rundir
from align.core.config import load_config
from align.core.errors import AlignError
from align.sft.config import SFTConfig
from align.sft.train import train

from tests.conftest import DEMO


def tiny_config(model_dir, out_dir, *extra):
    return load_config(SFTConfig, None, [
        f"out_dir={out_dir}", f"model.name={model_dir}", f"data.train={DEMO / 'sft.jsonl'}",
        "data.max_records=96", "data.eval_fraction=0.1", "model.lora.r=16", "model.lora.dropout=0.0",
        "training.batch_size=8", "training.learning_rate=5e-3", "training.epochs=2", "training.max_length=64",
        "training.save_steps=8", "tracking.wandb=false", "tracking.logging_steps=4", *extra,
    ])


@pytest.fixture(scope="module")
def qlora_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    figures = train(tiny_config(tiny_model_dir, out))
    return out, figures


def test_qlora_sft_lowers_eval_loss(qlora_run):
    _, figures = qlora_run
    assert figures["eval/loss"] < 0.8 * figures["eval/loss_before"]
    assert figures["train/steps"] == 24  # 96 records / batch 8 x 2 epochs
    assert 0 < figures["params/trainable"] < figures["params/total"]


def test_qlora_adapters_train_in_fp32_where_bf16_is_slow(qlora_run):
    """TRL casts a 4-bit base's adapters to bf16; on a CPU that made the demo's SFT step 2.6x slower."""
    import torch
    from safetensors.torch import load_file

    from align.core import modeling

    out, _ = qlora_run
    expected = torch.bfloat16 if modeling.bf16_is_fast() else torch.float32
    assert {t.dtype for t in load_file(out / "adapter" / "adapter_model.safetensors").values()} == {expected}


def test_final_weights_are_evaluated_once(qlora_run):
    """The trainer evaluates at the end of the last epoch; its figure is the final one, not a second pass."""
    out, figures = qlora_run
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r["eval/loss"] for r in logged if "eval/loss" in r and r["step"] == figures["train/steps"]]
    assert final == [figures["eval/loss"]]


def test_no_held_out_split_trains_without_evaluation(tiny_model_dir, tmp_path):
    figures = train(tiny_config(tiny_model_dir, tmp_path / "run", "model.quantization=none", "data.eval_fraction=0",
                                "training.max_steps=2"))
    assert figures["train/steps"] == 2 and figures["data/eval_records"] == 0
    assert not any(key.startswith("eval/") for key in figures)


def test_outputs_follow_the_stage_contract(qlora_run):
    out, figures = qlora_run
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "status.json", "adapter/adapter_config.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    assert json.loads((out / "metrics.json").read_text()) == figures
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 24
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["training"]["learning_rate"] == 5e-3 and resolved["model"]["lora"]["r"] == 16


def test_the_adapter_carries_a_model_card_and_names_its_base_as_given(qlora_run, tiny_model_dir):
    import hashlib

    out, figures = qlora_run
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    card = (out / "adapter" / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {tiny_model_dir}\nlibrary_name: peft\npipeline_tag: text-generation\n")
    data = DEMO / "sft.jsonl"
    lines = data.read_bytes().count(b"\n")
    assert f"`{data}`: {lines} lines, sha256 `{hashlib.sha256(data.read_bytes()).hexdigest()}`" in card
    assert f"`eval/loss`: {figures['eval/loss']:.4g}" in card and "loaded in 4-bit NF4" in card


def test_adapter_loads_with_peft_alone_and_generates(qlora_run):
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    out, _ = qlora_run
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    assert tokenizer.pad_token != tokenizer.eos_token
    model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        generated = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]


def test_finished_run_is_refused_without_overwrite(qlora_run, tiny_model_dir):
    out, _ = qlora_run
    with pytest.raises(AlignError, match="already holds a finished run"):
        train(tiny_config(tiny_model_dir, out))


def test_resume_continues_from_the_newest_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, out, "model.quantization=none", "training.max_steps=8", "training.epochs=1")
    train(config)
    # pretend the run was killed after its checkpoint at step 8: resume it towards 16 steps
    (out / "status.json").write_text(json.dumps({"state": "failed", "error": "killed"}))
    more = tiny_config(tiny_model_dir, out, "model.quantization=none", "training.max_steps=16", "training.epochs=1")
    figures = train(more, resume=True, allow_changes=True)  # max_steps is a changed setting
    assert figures["train/steps"] == 16
    assert "eval/loss_before" in figures  # kept from the first run, not recomputed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [4, 8, 12, 16]  # continued, nothing twice
    # the log holds no mean loss of one train() call (steps 9-16 alone here); metrics.json holds the run's
    assert not [r for r in records if "train/loss_mean" in r]
    assert figures["train/loss_mean"] == pytest.approx(sum(r["train/loss"] for r in records if "train/loss" in r) / 4)
    assert rundir.StageDir(out).newest_checkpoint().name == "checkpoint-16"


def sum_record(i: int, shape: str) -> dict:
    """With the tiny tokenizer and its chat template, for i = 7: "fits" is 22 tokens, "long_prompt" 83 (78 of them
    the prompt), "long_answer" 42 (14 the prompt)."""
    question = f"What is {i % 10} + 3?" + (" Show every step of the sum." * 4 if shape == "long_prompt" else "")
    answer = f"{i % 10} + 3 = {i % 10 + 3}." + (" I hope this helps!" * 4 if shape == "long_answer" else "")
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def length_config(model_dir, out, data, *extra):
    return load_config(SFTConfig, None, [
        f"out_dir={out}", f"model.name={model_dir}", f"data.train={data}", "data.eval_fraction=0",
        "model.quantization=none", "model.lora.r=4", "training.batch_size=4", "training.epochs=1",
        "training.max_length=32", "tracking.wandb=false", *extra])


@pytest.mark.parametrize("too_long, trained, truncated, dropped, steps", [
    (None, 30, 10, 10, 8),     # the default, truncate: the long answers train on their first 32 tokens
    ("drop", 20, 0, 20, 5),
])
def test_records_longer_than_max_length_are_counted(too_long, trained, truncated, dropped, steps, tiny_model_dir,
                                                    tmp_path, write_jsonl, caplog):
    """20 records fit in 32 tokens, 10 have a prompt of about 78 (no answer token survives the cut: dropped
    whatever data.too_long says), 10 an answer that ends past token 32. TRL used to drop the 10 silently
    while data/train_records said 40."""
    rows = [sum_record(i, ["fits", "fits", "long_prompt", "long_answer"][i % 4]) for i in range(40)]
    data = write_jsonl("sums.jsonl", rows)
    extra = [f"data.too_long={too_long}"] if too_long else []
    figures = train(length_config(tiny_model_dir, tmp_path / "run", data, *extra))
    assert figures["data/train_records"] == trained
    assert (figures["data/too_long_truncated"], figures["data/too_long_dropped"]) == (truncated, dropped)
    assert (figures["data/eval_too_long_truncated"], figures["data/eval_too_long_dropped"]) == (0, 0)
    assert figures["train/steps"] == steps  # ceil(trained / batch 4): TRL trained on exactly these
    assert (f"data.train: 20 of 40 records are longer than training.max_length=32 tokens: {truncated} truncated, "
            f"{dropped} dropped (prompt alone: 10; data.too_long={too_long or 'truncate'})") in caplog.text


@pytest.mark.parametrize("too_long, long_answers, advice", [
    (None, 0, "raise training.max_length (the shortest record has 86 tokens)"),
    ("drop", 20, "raise training.max_length (the shortest record has 42 tokens), or set data.too_long=truncate to "
                 "train on the first 32 tokens of the 20 whose prompt fits"),
])
def test_no_record_left_to_train_on_fails_before_the_run_starts(too_long, long_answers, advice, tiny_model_dir,
                                                                tmp_path, write_jsonl):
    """It used to crash inside the trainer, after the model had loaded: `ValueError: num_samples=0`."""
    rows = [sum_record(i, "long_answer" if i < long_answers else "long_prompt") for i in range(40)]
    data = write_jsonl("long.jsonl", rows)
    extra = [f"data.too_long={too_long}"] if too_long else []
    with pytest.raises(AlignError) as refused:
        train(length_config(tiny_model_dir, tmp_path / "run", data, *extra))
    assert str(refused.value) == (
        f"data.train: all 40 records are longer than training.max_length=32 tokens "
        f"(prompt alone: {40 - long_answers}), so none is left to train on; {advice}")
    assert not (tmp_path / "run").exists()


def test_no_held_out_record_left_fails_before_the_run_starts(tiny_model_dir, tmp_path, write_jsonl):
    """It used to train to the end and then fail with `KeyError: 'eval_loss'`."""
    data = write_jsonl("sums.jsonl", [sum_record(i, "fits") for i in range(16)])
    held_out = write_jsonl("held-out.jsonl", [sum_record(i, "long_prompt") for i in range(4)])
    with pytest.raises(AlignError) as refused:
        train(length_config(tiny_model_dir, tmp_path / "run", data, f"data.eval={held_out}"))
    assert str(refused.value) == (
        "data.eval: all 4 records are longer than training.max_length=32 tokens (prompt alone: 4), so none is left "
        "to evaluate; raise training.max_length (the shortest record has 86 tokens), or hold out no records "
        "(data.eval unset and data.eval_fraction=0)")
    assert not (tmp_path / "run").exists()


# logging every 3 steps, a checkpoint every 4: the logged intervals and the checkpoints do not line up
RESUMABLE = ("model.quantization=none", "training.max_steps=8", "training.save_steps=4", "tracking.logging_steps=3",
             "training.lr_scheduler=constant", "training.warmup_ratio=0")


@pytest.fixture(scope="module")
def unbroken_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "unbroken"
    return out, train(tiny_config(tiny_model_dir, out, *RESUMABLE))


def killed_at(monkeypatch, step: int | None):
    """Stop the run by an error after optimiser step `step`, or (None) after training, just before the
    adapter is saved: what a kill leaves, with the status saying failed."""
    from transformers import TrainerCallback

    from align.sft import train as sft_train

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise RuntimeError("killed")

    def refuse(*args, **kwargs):
        raise RuntimeError("killed")

    if step is None:
        monkeypatch.setattr(sft_train, "save_weights", refuse)
    else:
        monkeypatch.setattr(sft_train.guards, "nonfinite_callback", Kill)


def logged_losses(out) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]


def same_figures(resumed: dict, unbroken: dict) -> None:
    from tests.reliability.stages import UNTIMED

    assert sorted(resumed) == sorted(unbroken)
    for key, value in unbroken.items():
        if not UNTIMED.search(key):
            assert resumed[key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.parametrize("step", [None, 6])
def test_resumed_run_ends_with_the_figures_of_an_unbroken_one(step, unbroken_run, tiny_model_dir, tmp_path,
                                                              monkeypatch):
    """Killed after its last checkpoint (8 of 8 steps), a run used to resume into a 9th step; killed at
    step 6, it reported as train/loss_mean the mean of steps 5-8 alone, and logged at step 6 the mean
    of steps 5-6 where the unbroken run logged that of 4-6."""
    unbroken_out, unbroken = unbroken_run
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, out, *RESUMABLE)
    with monkeypatch.context() as patched:
        killed_at(patched, step)
        with pytest.raises(RuntimeError, match="killed"):
            train(config)
    assert rundir.StageDir(out).newest_checkpoint().name == f"checkpoint-{8 if step is None else 4}"
    resumed = train(config, resume=True)
    assert resumed["train/steps"] == unbroken["train/steps"] == 8
    same_figures(resumed, unbroken)
    cut, whole = logged_losses(out), logged_losses(unbroken_out)
    assert [s for s, _ in cut] == [s for s, _ in whole] == [3, 4, 6, 8]
    assert [loss for _, loss in cut] == pytest.approx([loss for _, loss in whole], rel=1e-5)


def test_mean_loss_covers_every_step(unbroken_run):
    """train/loss_mean is the mean over all 8 steps: the logged means weighted by the steps each covers."""
    out, figures = unbroken_run
    logged = logged_losses(out)
    covered = [step - before for (before, _), (step, _) in zip([(0, None)] + logged, logged)]
    assert covered == [3, 1, 2, 2]
    assert figures["train/loss_mean"] == pytest.approx(sum(loss * n for (_, loss), n in zip(logged, covered)) / 8)


@pytest.mark.parametrize("template", ["chat", "flan"])
@pytest.mark.parametrize("max_length, trained, truncated, dropped", [(30, 4, 0, 4), (31, 8, 4, 0)])
def test_the_count_agrees_with_trl_at_the_cut(template, max_length, trained, truncated, dropped, tiny_model_dir,
                                              tmp_path, write_jsonl):
    """4 short records (18 tokens with the chat template, 17 with flan's and EOS) and 4 whose prompt is
    30 tokens in both: at max_length=30 no response token is left (TRL would drop them unsaid); at 31
    one is, and TRL trains on them cut. The run fails if TRL keeps another number of examples than the
    count (`_check_trl_kept_all`), so these figures are TRL's too."""
    def record(i: int, long: bool) -> dict:
        question = f"What is {i} + 3?" + (" Show every step of the sum." if long else "")
        answer = f"{i} + 3 = {i + 3}." + " I hope this helps!" * 4 if long else f"{i + 3}."
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    data = write_jsonl("sums.jsonl", [record(i, long) for i in range(4) for long in (False, True)])
    figures = train(length_config(tiny_model_dir, tmp_path / "run", data, f"data.template={template}",
                                  f"training.max_length={max_length}", "training.max_steps=1"))
    assert figures["data/train_records"] == trained
    assert (figures["data/too_long_truncated"], figures["data/too_long_dropped"]) == (truncated, dropped)


# ---------------------------------------------------------------- micro-batches and the pre-flight estimate


def logged_steps(out, *keys):
    """The figures `keys` of every step that logged them all, one flat list in step order."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[k] for r in rows if all(k in r for k in keys) for k in keys]


def test_micro_batches_train_the_same_global_batch(tiny_model_dir, tmp_path):
    """8 sequences a step in one pass, or in four passes of 2 (a budget of 2 x max_length): the same records,
    the same token-mean loss and the same gradient, so the same steps."""
    def run(name, *extra):
        out = tmp_path / name
        train(tiny_config(tiny_model_dir, out, "model.quantization=none", "data.eval_fraction=0",
                          "training.max_steps=3", "training.save_steps=3", "tracking.logging_steps=1", *extra))
        state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
        return logged_steps(out, "train/loss", "train/grad_norm"), state["train_batch_size"]

    whole, whole_batch = run("whole")
    split, split_batch = run("split", "training.max_tokens_per_batch=128")  # max_length 64: 2 a pass
    assert (whole_batch, split_batch) == (8, 2)
    assert len(whole) == len(split) == 6  # loss and gradient norm of 3 steps
    assert split == pytest.approx(whole, rel=1e-4)


def test_recomputed_activations_train_alike(tiny_model_dir, tmp_path):
    def run(name, *extra):
        out = tmp_path / name
        train(tiny_config(tiny_model_dir, out, "model.quantization=none", "data.eval_fraction=0",
                          "training.max_steps=2", "tracking.logging_steps=1", *extra))
        return logged_steps(out, "train/loss", "train/grad_norm")

    assert run("recomputed", "training.gradient_checkpointing=true") == pytest.approx(run("kept"), rel=1e-4)


def test_a_budget_that_cannot_fit_is_refused_through_the_cli_before_the_model_loads(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    from click.testing import CliRunner

    from align.cli import cli
    from align.core import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)  # 1 MB available
    loaded = []
    monkeypatch.setattr("align.core.modeling.load_base", lambda *a, **k: loaded.append(1))
    out = tmp_path / "run"

    def refused(*extra):
        result = CliRunner().invoke(cli, ["sft", "--out", str(out), *(f"--set={s}" for s in [
            f"model.name={tiny_model_dir}", f"data.train={DEMO / 'sft.jsonl'}", "tracking.wandb=false", *extra])])
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.output
        return errors[0]

    message = refused("training.max_tokens_per_batch=1024", "training.max_length=64")
    assert message.startswith("error: SFT needs about ") and "GB is available" in message
    assert message.endswith("lower training.max_tokens_per_batch (now 1024), or set training.gradient_checkpointing=true")
    # one sequence a pass already: its length is what to lower; recomputation on, nothing else to say
    message = refused("training.max_tokens_per_batch=64", "training.max_length=512", "training.gradient_checkpointing=true")
    assert message.endswith("lower training.max_length (now 512)")
    assert not loaded and not out.exists()
