"""Reward-model quality: align's reward stage against TRL 1.16's RewardTrainer on HH-RLHF (issue #20, part 4).

    .venv/bin/python -m bench.rm_quality [--train-pairs 128] [--heldout-pairs 128] [--max-length 512]
                                         [--oasst-train-groups 16] [--oasst-heldout-groups 24] [--no-oasst]
    .venv/bin/python -m bench.rm_quality --tiny --out /tmp/rmq      # the same code on the tiny model, ~1 min
    .venv/bin/python -m bench.rm_quality --profile                  # where ours' step time goes, ~10 min
    .venv/bin/python -m bench.rm_quality --seeds 0,1,2 [--set training.learning_rate=1e-3]   # several splits
    .venv/bin/python -m bench.rm_quality --own-start                # TRL's own initial weights and pair order

Both contenders train a reward model on the same base (SmolLM2-135M-Instruct in NF4, LoRA r=16 alpha 32
dropout 0.05 on every linear layer, the head in full: configs/reward/smollm2-qlora.yaml) with the same
learning rate, schedule, pairs a step, clipping, max length, seed and one epoch over the same pairs.
Every setting TRL gets is read from the very config object ours trains with. TRL also starts where ours
started: ours' trainable weights as initialised (LoRA's A and B, the head) are copied into TRL's model, and
TRL takes ours' pairs in ours' order (`train_sampling_strategy="sequential"` over them). So what differs is
the two implementations and the dropout masks; the random draws that differed before (LoRA's A, the head,
the shuffle) are common. Without dropout the two take the same steps (the tiny test checks the losses and
the trained rewards). `--own-start` lets TRL draw its own (its seeded initialisation and shuffle).

    ours   `align.stages.stage("reward").train()(config)`, the config built from the preset plus the
           data overrides, as a user runs it: its token-budget micro-batches, its eval before and after
    trl    `trl.RewardTrainer` (the .venv's TRL), QLoRA through its `quantization_config` and
           `peft_config` (align's: the same NF4 and LoRA settings); its adapters cast back to fp32 after
           construction (TRL casts them to bf16, which crashes the reward trainer on a 4-bit base on the
           CPU); bf16 off; dropout kept (TRL's `disable_dropout` would switch the LoRA dropout off);
           gradient checkpointing as the preset says (off; TRL's default is on)

A step is batch_size x grad_accum = 16 pairs for both. Ours cuts each batch into forward passes of at
most max_tokens_per_batch = 1024 padded tokens; TRL takes `--trl-per-device-batch` pairs a pass (default
1: at most 2 x max_length = 1024 tokens, the same bound) and accumulates 16 passes. With the preset's
literal 8 pairs a pass and no recomputation, TRL's first step grew to 21 GB and was killed by the kernel
(2026-12-05, max_length 512), so that layout is not run.

Data: the HH-RLHF harmless-base dev slice converted with align's own converter (`--from hh-rlhf`),
split by prompt with a seeded shuffle: the first prompts are held out, the training pairs come from
the rest. TRL drops a pair whose chosen or rejected text is longer than max_length; ours keeps it and
drops the text's start. So both train on the same pairs, the first of the training pool that fit, and
held-out accuracy is reported on the held-out pairs that fit (the comparison) and, apart, on the long
ones (truncated by the scorer for both). The chat template is applied once, align's way
(`reward.score.conversation_text`), and TRL gets those token ids: given the conversational records it
would tokenise `apply_chat_template(prompt + completion)`, which for SmolLM2 is align's text plus the
newline after the final <|im_end|> (checked on every training text: `template_check`); align drops
that token so PPO can reuse a policy's tokens, and a reward read at another token would make this a
comparison of formats.

Scoring: both untrained and both trained models are scored in their own process by the one function
ours' stage evaluates with (`reward.score.score_texts`, eval_batch_size and the token budget); for ours
those are the stage's own eval_before and eval passes. Each saved model is then loaded back from its
directory by `reward.score.RewardModel.load` (TRL's adapter gets align's base record beside it) and
the first `--dir-check-groups` held-out groups scored again: `checks.*_saved_max_abs_diff`. Pair
accuracy: r(chosen) > r(rejected), a tie counts as wrong.

OpenAssistant (oasst2 dev trees, `--from oasst`, a secondary figure, `--no-oasst` skips it): ours trains
on the K-wise rankings themselves (the InstructGPT loss), TRL on the pairs expanded from them; top-1
accuracy on held-out groups = the highest-scoring completion is a rank-1 one.

Each training run is a process of its own: peak RSS is the kernel's figure for that child (wait4), or
the high-water mark before its training span where that is higher (resetting the mark for the span, below,
resets wait4's figure too); the training span (ours: the stage's batch loop; TRL: `trainer.train()`) is
timed in wall and CPU seconds, with its own peak (the RSS high-water mark reset just before it).

Each split's HH line also tallies the held-out pairs that fit by which contender orders them right
(`paired_fit`): ours minus TRL with a 95% interval from the discordant pairs (McNemar). `--seeds` runs several
splits one after another into rm_quality-splits.json, the tallies pooled over them; `--set` changes a preset
setting for both contenders.

`--profile` times ours' step on one batch instead (rm_quality-profile.json), in variants of layout and heap
(`--profile-variants`): the stage's micro-batches as shipped, or as before 2026-12-05 22:54 UTC (completions
cut by length, each pass run twice); the C heap as the stage sets it (1 MB mmap threshold), glibc's dynamic
default, a 2 MB threshold, or the default trimmed after every backward (settle_heap).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

PRESET = common.ROOT / "configs" / "reward" / "smollm2-qlora.yaml"
SHARED_DATA = Path("/work/shared/data")
FIXTURES = common.ROOT / "tests" / "fixtures"
CONTENDERS = ("ours", "trl")
# the real workload's defaults: 58 min on the shared 2-core machine at load average 10 (2026-12-05; the
# training spans' CPU time was half to two thirds of their wall time); tiny: the tests' random 2-layer model
# on the fixtures, a few pairs, about a minute
WORKLOADS = {
    "smollm2": {"model": "smollm2-135m-instruct", "hh": SHARED_DATA / "hh-rlhf-harmless-base-dev.jsonl.gz",
                "oasst": SHARED_DATA / "oasst2-trees-dev.jsonl.gz", "train_pairs": 128, "heldout_pairs": 128,
                "max_length": 512, "oasst_train_groups": 16, "oasst_heldout_groups": 24, "seed": 0, "extra": []},
    "tiny": {"model": "tiny-random-llama", "hh": FIXTURES / "hh-rlhf.jsonl", "oasst": FIXTURES / "oasst.trees.jsonl",
             # seed 2 holds out a long and a fitting prompt of each fixture
             "train_pairs": 2, "heldout_pairs": 2, "max_length": 64, "oasst_train_groups": 1, "oasst_heldout_groups": 2,
             "seed": 2,
             # one pair a step, so a pair or two make a step; a budget below two completions, so the tiny
             # run cuts micro-batches as a real one does
             "extra": ["training.batch_size=1", "training.grad_accum=1", "training.max_tokens_per_batch=96"]},
}


# ---------------------------------------------------------------- data: convert, split, measure


def convert(source: str, path: Path, out: Path) -> dict[str, Any]:
    """align's converter (as `align data convert --from SOURCE`); its report's counts."""
    from align.convert import convert as align_convert

    return align_convert(source, [str(path)], str(out)).summary()


def split_by_prompt(groups: list, heldout: int, seed: int) -> tuple[list, list]:
    """Prompts in a seeded shuffle; the first ones are held out (with all their groups) until `heldout`
    groups are; the rest, in that order, are the training pool. No prompt is on both sides."""
    by_prompt: dict[str, list] = {}
    for g in groups:
        by_prompt.setdefault(json.dumps(g.prompt, sort_keys=True), []).append(g)
    prompts = list(by_prompt)
    random.Random(seed).shuffle(prompts)
    held, pool = [], []
    for p in prompts:
        (held if len(held) < heldout else pool).extend(by_prompt[p])
    return held, pool


def lengths(tokenizer: Any, groups: list) -> list[list[int]]:
    """Tokens of each completion's conversation as the reward stage formats it, untruncated."""
    return [[len(ids) for ids in tokenizer(group_texts(tokenizer, g), add_special_tokens=False)["input_ids"]]
            for g in groups]


def template_check(tokenizer: Any, groups: list) -> dict[str, Any]:
    """How TRL's conversational path (apply_chat_template(prompt + completion, tokenize=True), what its
    `_tokenize` calls) compares with the ids of align's conversation_text, text by text."""
    from align.reward.score import conversation_text

    identical, extra, other = 0, {}, 0
    for g in groups:
        for c in g.completions:
            messages = [*g.prompt, {"role": "assistant", "content": c}]
            ours = tokenizer(conversation_text(tokenizer, g.prompt, c), add_special_tokens=False)["input_ids"]
            theirs = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
            if theirs == ours:
                identical += 1
            elif theirs[:len(ours)] == ours:
                tail = repr(tokenizer.decode(theirs[len(ours):]))
                extra[tail] = extra.get(tail, 0) + 1
            else:
                other += 1
    return {"texts": identical + sum(extra.values()) + other, "identical": identical,
            "trl_adds_at_the_end": extra, "differ_otherwise": other}


def write_groups(path: Path, groups: list, kind: str) -> None:
    """Groups back to align's records of the converter's kind: preferences {prompt, chosen, rejected} or
    rankings {prompt, completions, ranks} (a file holds one kind)."""
    rows = []
    for g in groups:
        if kind == "preferences":
            rows.append({"prompt": list(g.prompt), "chosen": g.completions[0], "rejected": g.completions[1]})
        else:
            rows.append({"prompt": list(g.prompt), "completions": list(g.completions), "ranks": list(g.ranks)})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def prepare_task(task: str, source: str, raw: Path, n_train: int, n_heldout: int, max_length: int, tokenizer: Any,
                 seed: int, work: Path) -> dict[str, Any]:
    """Convert, split by prompt, keep the first n_train training groups that fit max_length, mark each
    held-out group as fitting or long; writes TASK-train.jsonl and TASK-heldout.jsonl."""
    from align.convert import converter
    from align.reward.formats import load_groups

    converted = work / f"{task}-all.jsonl"
    conversion = convert(source, raw, converted)
    held, pool = split_by_prompt(load_groups(str(converted)), n_heldout, seed)
    pool_lengths = lengths(tokenizer, pool)
    chosen = [i for i, ls in enumerate(pool_lengths) if max(ls) <= max_length][:n_train]
    if not chosen:
        raise SystemExit(f"{task}: no training group fits max_length {max_length}")
    train = [pool[i] for i in chosen]
    fits = [max(ls) <= max_length for ls in lengths(tokenizer, held)]
    kind = converter(source).kind
    write_groups(work / f"{task}-train.jsonl", train, kind)
    write_groups(work / f"{task}-heldout.jsonl", held, kind)
    return {
        "conversion": conversion, "groups": len(held) + len(pool), "heldout": len(held),
        "heldout_fit": sum(fits), "heldout_long": len(fits) - sum(fits), "heldout_fits": fits,
        "heldout_pairs": sum(len(g.pairs) for g in held),
        "train": len(train), "train_pairs": sum(len(g.pairs) for g in train),
        "train_long_skipped": chosen[-1] + 1 - len(chosen),  # the long ones passed over on the way to n_train
        "train_completions": sum(len(g.completions) for g in train),
        "train_tokens": sum(sum(pool_lengths[i]) for i in chosen),
        "template_check": template_check(tokenizer, train),
        "train_file": str(work / f"{task}-train.jsonl"), "heldout_file": str(work / f"{task}-heldout.jsonl"),
    }


# ---------------------------------------------------------------- the children


def reward_config(spec: dict[str, Any]) -> Any:
    """The stage's config from the preset and overrides, exactly as `align reward --config ... --set ...`."""
    from align.stages import stage_config

    return stage_config("reward", spec["preset"], [*spec["overrides"], f"out_dir={spec['out_dir']}",
                                                   f"data.train={spec['train']}", f"data.eval={spec['heldout']}"])


def group_texts(tokenizer: Any, group: Any) -> list[str]:
    """What the reward model reads for each completion of a group (the reward stage's formatting)."""
    from align.reward.score import conversation_text

    return [conversation_text(tokenizer, group.prompt, c) for c in group.completions]


def held_out_texts(tokenizer: Any, path: str) -> tuple[list, list[str]]:
    from align.reward.formats import load_groups

    groups = load_groups(path)
    return groups, [text for g in groups for text in group_texts(tokenizer, g)]


class Span:
    """Wall and CPU seconds of a span and the RSS high-water mark inside it (reset at its start). The reset
    also resets what wait4 reports for the process, so the mark before it is kept: `before_peak_mb`."""

    def __enter__(self) -> "Span":
        self.before_peak_mb = common.hwm_mb()
        common.reset_peak_rss()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.peak_mb = common.hwm_mb()


def batch_tokens(batch: dict[str, Any]) -> dict[str, int]:
    """Padded and real tokens of a stage batch's micro-batches; `nograd_padded`: those of micro-batches that
    hold part of a group over the token budget, which run twice (reward.micro_batches.backward's gradient cache)."""
    padded = [int(b["input_ids"].numel()) for b in batch["inputs"]]
    return {"padded": sum(padded), "real": sum(int(b["attention_mask"].sum()) for b in batch["inputs"]),
            "nograd_padded": sum(p for p, whole in zip(padded, batch["whole"]) if not whole),
            "batches": 1, "micro_batches": len(batch["micro"])}


def ours_child(spec: dict[str, Any]) -> None:
    """The reward stage as a user runs it. The bench only listens: it keeps what the stage's own scoring
    returns (eval before and after), times the stage's batch loop and counts the tokens of its batches."""
    import torch

    torch.set_num_threads(spec["threads"])
    import align.reward.train as stage_module
    from align.core import checkpoint
    from align.stages import stage
    from align.reward.micro_batches import Batcher

    scored, spans, trained, tokenizers = [], [], [], []
    tokens = {"padded": 0, "nograd_padded": 0, "real": 0, "batches": 0, "micro_batches": 0}
    score_groups, train_batches, batcher_call = stage_module.score_groups, stage_module._train_batches, Batcher.__call__
    build_learner = stage_module._build_learner

    def recording_build_learner(*args: Any, **kwargs: Any) -> Any:
        learner = build_learner(*args, **kwargs)
        tokenizers.append(learner.tokenizer)
        if spec.get("start"):  # the trainable weights as initialised, for TRL to start from
            unwrapped = learner.accelerator.unwrap_model(learner.model)
            torch.save({k: p.detach().clone() for k, p in checkpoint.trainable(unwrapped).items()},
                       f"{spec['start']}.pt")
        return learner

    def recording_score_groups(*args: Any, **kwargs: Any) -> list[list[float]]:
        scored.append(score_groups(*args, **kwargs))
        return scored[-1]

    def timed_train_batches(*args: Any, **kwargs: Any) -> Any:
        with Span() as span:
            state = train_batches(*args, **kwargs)
        spans.append(span)
        return state

    def counting_call(self: Any, groups: list) -> dict[str, Any]:
        batch = batcher_call(self, groups)
        tokens.update({k: tokens[k] + v for k, v in batch_tokens(batch).items()})
        trained.extend(groups)  # the stage's scoring does not batch through here: these are the training batches
        return batch

    stage_module.score_groups, stage_module._train_batches = recording_score_groups, timed_train_batches
    stage_module._build_learner, Batcher.__call__ = recording_build_learner, counting_call
    figures = stage("reward").train()(reward_config(spec), overwrite=True)
    if spec.get("start"):  # the pairs in the order ours took them, as the texts both read
        Path(f"{spec['start']}-pairs.json").write_text(json.dumps(pair_texts(tokenizers[0], trained)))
    span = spans[0]
    log = [json.loads(line) for line in (Path(spec["out_dir"]) / "metrics.jsonl").read_text().splitlines()]
    common.report({
        "before": scored[0], "after": scored[1], "steps": figures["train/steps"], "pairs_trained": spec["train_pairs"],
        "train_s": span.wall, "train_cpu_s": span.cpu, "train_peak_rss_mb": span.peak_mb, "tokens": tokens,
        "before_train_peak_rss_mb": span.before_peak_mb,
        "stage_figures": {k: v for k, v in figures.items() if not k.startswith("eval/calibration")},
        "loss_log": [{"step": e["step"], "loss": e.get("train/loss"), "accuracy": e.get("train/accuracy")}
                     for e in log],
    })


def pair_texts(tokenizer: Any, groups: list) -> list[list[str]]:
    """[chosen, rejected] texts of every (winner, loser) pair of each ranking, in order (a preference is one pair)."""
    return [[texts[w], texts[l]] for g in groups for texts in [group_texts(tokenizer, g)] for w, l in g.pairs]


def trl_dataset(tokenizer: Any, pairs: list[list[str]], max_length: int) -> Any:
    """TRL's processed form ({chosen_ids, rejected_ids}) of align's token ids of the pairs' texts."""
    from datasets import Dataset

    from align.reward.score import token_lengths

    return Dataset.from_list([{"chosen_ids": chosen, "rejected_ids": rejected}
                              for chosen, rejected in (token_lengths(tokenizer, pair, max_length) for pair in pairs)])


def trl_trainer(config: Any, tokenizer: Any, dataset: Any, out_dir: Path, per_device: int, in_order: bool) -> Any:
    """TRL's RewardTrainer with every knob ours has set from our config; the rest at TRL's defaults.
    A step is the same batch_size x grad_accum pairs as ours, in forward passes of `per_device` pairs;
    `in_order`: the dataset's order (else TRL's seeded shuffle)."""

    import torch
    from trl import RewardConfig, RewardTrainer

    from align.core import modeling

    t = config.training
    pairs_per_step = t.batch_size * t.grad_accum
    if pairs_per_step % per_device:
        raise SystemExit(f"--trl-per-device-batch {per_device} does not divide the {pairs_per_step} pairs of a step")
    accumulate = pairs_per_step // per_device
    steps = math.ceil(math.ceil(len(dataset) / per_device) / accumulate)
    args = RewardConfig(
        output_dir=str(out_dir), per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulate,
        num_train_epochs=t.epochs, learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=round(t.warmup_ratio * steps),  # transformers 5 takes steps; ours rounds ratio x steps alike
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, max_length=config.data.max_length,
        gradient_checkpointing=t.gradient_checkpointing, seed=t.seed, bf16=False, fp16=False,
        disable_dropout=False,  # TRL's default would switch off the LoRA dropout ours trains with
        logging_steps=config.tracking.logging_steps, save_strategy="no", report_to="none", dataloader_num_workers=0,
        model_init_kwargs={"dtype": torch.float32}, train_sampling_strategy="sequential" if in_order else "random",
    )
    trainer = RewardTrainer(
        model=modeling.resolve_model_path(config.model.name), args=args, train_dataset=dataset,
        processing_class=tokenizer,
        quantization_config=modeling.quantization_config(config.model, skip_modules=["score"]),
        peft_config=modeling.lora_config(config.model.lora, "SEQ_CLS"),
    )
    modeling.cast_trainable_to_fp32(trainer.model)  # TRL made the adapters bf16: on the CPU they crash on dtype
    return trainer


def trl_child(spec: dict[str, Any]) -> None:
    """TRL's RewardTrainer on the same pairs; its model scored before and after training by the function
    ours' stage scores with, then saved with align's base record so RewardModel.load reads it."""
    import torch

    torch.set_num_threads(spec["threads"])
    from align.core import modeling
    from align.core.base_model import keep_4bit_layout_trainable
    from align.reward.formats import load_groups
    from align.reward.score import score_texts

    config = reward_config(spec)
    tokenizer = modeling.load_tokenizer(modeling.resolve_model_path(config.model.name))
    start = spec.get("start")
    pairs = (json.loads(Path(f"{start}-pairs.json").read_text()) if start
             else pair_texts(tokenizer, load_groups(spec["train"])))
    dataset = trl_dataset(tokenizer, pairs, config.data.max_length)
    trainer = trl_trainer(config, tokenizer, dataset, Path(spec["out_dir"]) / "trainer", spec["trl_per_device_batch"],
                          in_order=bool(start))
    if start:
        start_from(trainer.model, torch.load(f"{start}.pt", weights_only=True))
    # bitsandbytes repacks a 4-bit layer for good the first time it runs in eval mode without grad, after
    # which no gradient flows through it (align.core.base_model): the scoring below must not do that to TRL
    keep_4bit_layout_trainable(trainer.model)
    groups, texts = held_out_texts(tokenizer, spec["heldout"])
    t = config.training

    def score() -> list[list[float]]:
        from align.reward.formats import regroup

        flat = score_texts(trainer.model, tokenizer, texts, config.data.max_length, t.eval_batch_size,
                           t.max_tokens_per_batch)
        return regroup(groups, flat.tolist())

    before = score()
    tokens = {"padded": 0, "real": 0, "batches": 0}
    collate = trainer.data_collator

    def counting_collate(examples: list) -> dict[str, Any]:
        batch = collate(examples)
        tokens["padded"] += int(batch["input_ids"].numel())
        tokens["real"] += int(batch["attention_mask"].sum())
        tokens["batches"] += 1
        return batch

    trainer.data_collator = counting_collate
    with Span() as span:
        output = trainer.train()
    after = score()
    save_loadable(trainer, tokenizer, config)
    common.report({
        "before": before, "after": after, "steps": trainer.state.global_step,
        "pairs_trained": len(trainer.train_dataset),
        "train_s": span.wall, "train_cpu_s": span.cpu, "train_peak_rss_mb": span.peak_mb, "tokens": tokens,
        "before_train_peak_rss_mb": span.before_peak_mb,
        "trainer_figures": {k: v for k, v in output.metrics.items() if isinstance(v, (int, float))},
        "loss_log": [{"step": e["step"], "loss": e["loss"], "accuracy": e.get("accuracy")}
                     for e in trainer.state.log_history if "loss" in e],
    })


def start_from(model: Any, weights: dict[str, Any]) -> None:
    """TRL's trainable weights (LoRA's and the head's) set to ours' as initialised: the same names under peft."""
    import torch

    from align.core import checkpoint

    mine = checkpoint.trainable(model)
    if set(mine) != set(weights):
        raise SystemExit(f"TRL's trainable weights are not ours': {sorted(set(mine) ^ set(weights))[:4]}")
    with torch.no_grad():
        for name, p in mine.items():
            p.copy_(weights[name])


def save_loadable(trainer: Any, tokenizer: Any, config: Any) -> None:
    """TRL's adapter (LoRA + the score head, peft's modules_to_save) as a reward directory align reads."""
    from align.core import modeling

    target = Path(config.out_dir) / "adapter"
    trainer.model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    modeling.save_base_record(target, config.model)


def score_child(spec: dict[str, Any]) -> None:
    """Each saved model of each task, loaded from its directory by reward.score.RewardModel and scored on the
    first held-out groups: what the directory gives back, to set beside what was scored in memory."""
    import gc

    import torch

    torch.set_num_threads(spec["threads"])
    from align.reward.formats import load_groups, regroup
    from align.reward.score import RewardModel

    out: dict[str, dict[str, Any]] = {}
    for task, job in spec["tasks"].items():
        groups = load_groups(job["heldout"])[:spec["groups"]]
        for name, directory in job["models"].items():
            model = RewardModel.load(directory, max_length=spec["max_length"])
            texts = [text for g in groups for text in group_texts(model.tokenizer, g)]
            out.setdefault(task, {})[name] = regroup(groups, model.score_texts(texts).tolist())
            del model
            gc.collect()
    common.report(out)


def completions_cut(batcher: Any, groups: list, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch laid out as the stage did before whole-group micro-batches (2026-12-05 22:54 UTC): every
    completion sorted by length and cut at the budget, groups split across micro-batches, so every
    micro-batch of a batch that does not fit one pass runs twice (gradient cache)."""
    from align.core.token_batches import token_batches
    from align.reward.score import pad, token_lengths

    texts = [text for g in groups for text in group_texts(batcher.tokenizer, g)]  # the Batcher's order
    ids = token_lengths(batcher.tokenizer, texts, batcher.max_length)
    micro = token_batches([len(i) for i in ids], batcher.max_tokens)
    if len(micro) == 1:
        micro = [list(range(len(ids)))]
    inputs = [pad(batcher.tokenizer, [ids[i] for i in m]) for m in micro]
    return {**batch, "inputs": inputs, "micro": micro, "whole": [len(micro) == 1] * len(micro)}


def profile_child(spec: dict[str, Any]) -> None:
    """One fixed batch of the training pairs through the stage's learner and reward.micro_batches.backward,
    `reps` times, in the layout and with the heap setting of the spec: where ours' step time goes."""
    import torch

    torch.set_num_threads(spec["threads"])
    import align.reward.train as stage_module
    from align.reward import micro_batches
    from align.reward.formats import load_groups

    groups = load_groups(spec["train"])[:spec["pairs"]]
    learner = stage_module._build_learner(reward_config(spec), len(groups))
    settle_heap(spec["heap"], learner)
    learner.model.train()
    steps = []
    for _ in range(spec["reps"]):
        batch = learner.batcher(groups)
        if spec["layout"] == "completions_cut":
            batch = completions_cut(learner.batcher, groups, batch)
        with Span() as span:
            micro_batches.backward(learner.accelerator, learner.model, batch, 1.0)
            learner.optimizer.zero_grad()
        counted = batch_tokens(batch)
        steps.append({"wall_s": round(span.wall, 2), "cpu_s": round(span.cpu, 2),
                      "peak_rss_mb": round(span.peak_mb, 1), "padded_tokens": counted["padded"],
                      "nograd_padded_tokens": counted["nograd_padded"], "micro_batches": counted["micro_batches"]})
    common.report({"steps": steps})


# ---------------------------------------------------------------- figures


def pair_hits(groups: list, rewards: list[list[float]], keep: list[bool]) -> list[bool]:
    """For each (winner, loser) pair of the kept groups, in order: r(winner) > r(loser); a tie is wrong."""
    return [rs[w] > rs[l] for g, rs, k in zip(groups, rewards, keep) if k for w, l in g.pairs]


def pair_accuracy(groups: list, rewards: list[list[float]], keep: list[bool]) -> float | None:
    """Share of the kept groups' pairs ordered right (pair_hits)."""
    hits = pair_hits(groups, rewards, keep)
    return round(sum(hits) / len(hits), 4) if hits else None


def top1_accuracy(groups: list, rewards: list[list[float]], keep: list[bool]) -> float | None:
    """Share of the kept groups whose highest-scoring completion is ranked first (reward.metrics' accuracy_top1)."""
    hits = [g.ranks[max(range(len(rs)), key=rs.__getitem__)] == min(g.ranks)
            for g, rs, k in zip(groups, rewards, keep) if k]
    return round(sum(hits) / len(hits), 4) if hits else None


def paired_tally(groups: list, ours: list[list[float]], trl: list[list[float]], keep: list[bool]) -> dict[str, int]:
    """The kept groups' pairs by which contender orders them right: both, ours only, TRL only, neither. The
    discordant counts give the paired difference's interval (McNemar), over one split or pooled over splits."""
    names = {(True, True): "both", (True, False): "ours_only", (False, True): "trl_only", (False, False): "neither"}
    tally = dict.fromkeys(names.values(), 0)
    for right in zip(pair_hits(groups, ours, keep), pair_hits(groups, trl, keep)):
        tally[names[right]] += 1
    return tally


def paired_difference(tally: dict[str, int]) -> dict[str, Any]:
    """Ours' accuracy minus TRL's on the same pairs, with a 95% normal interval from the discordant pairs."""
    n = sum(tally.values())
    b, c = tally["ours_only"], tally["trl_only"]
    diff = (b - c) / n
    half = 1.96 * math.sqrt(max(0.0, b + c - n * diff ** 2)) / n
    return {"pairs": n, **tally, "difference": round(diff, 4), "interval_95": [round(diff - half, 4), round(diff + half, 4)]}


def accuracies(task: str, groups: list, fits: list[bool], before: list, after: list) -> dict[str, Any]:
    """Before/after accuracy on the held-out groups that fit both, the long ones, and all."""
    subsets = {"fit": fits, "long": [not f for f in fits], "all": [True] * len(fits)}
    out = {}
    for when, rewards in (("before", before), ("after", after)):
        for subset, keep in subsets.items():
            out[f"accuracy_{when}_{subset}"] = pair_accuracy(groups, rewards, keep)
            if task == "oasst":
                out[f"top1_{when}_{subset}"] = top1_accuracy(groups, rewards, keep)
    return out


def contender_figures(task: str, data: dict[str, Any], run: dict[str, Any], groups: list) -> dict[str, Any]:
    """One contender's line: accuracies, steps, seconds per step and per pair, memory, tokens."""
    pairs, tokens = run["pairs_trained"], run["tokens"]
    figures = {
        **accuracies(task, groups, data["heldout_fits"], run["before"], run["after"]),
        "steps": run["steps"], "pairs_trained": pairs, "train_s": round(run["train_s"], 2),
        "sec_per_step": round(run["train_s"] / max(1, run["steps"]), 3),
        "sec_per_pair": round(run["train_s"] / pairs, 4),
        "cpu_s_per_pair": round(run["train_cpu_s"] / pairs, 4),
        # the process's peak: wait4's (from the training span on: the span's reset also resets it) or the mark
        # before the span (imports, loading, scoring the untrained model), whichever is higher
        "peak_rss_mb": max(run["peak_rss_mb"], round(run["before_train_peak_rss_mb"], 1)),
        "train_peak_rss_mb": round(run["train_peak_rss_mb"], 1),
        "before_train_peak_rss_mb": round(run["before_train_peak_rss_mb"], 1),
        "process_wall_s": run["process_wall_s"],
        "padded_tokens": tokens["padded"], "real_tokens": tokens["real"],
        "padding_share": round(1 - tokens["real"] / max(1, tokens["padded"]), 4),
        "malloc": run.get("malloc"),
    }
    if "nograd_padded" in tokens:
        figures["nograd_padded_tokens"] = tokens["nograd_padded"]
        figures["micro_batches"] = tokens["micro_batches"]
    if task == "oasst":
        figures["sec_per_group"] = round(run["train_s"] / data["train"], 4)
    return figures


def max_abs_diff(rewards: list[list[float]], others: list[list[float]]) -> float:
    """The largest difference between two scorings of the same groups (zip: the shorter's groups)."""
    return round(max(abs(a - b) for rs, os in zip(rewards, others) for a, b in zip(rs, os)), 6)


def task_figures(task: str, data: dict[str, Any], runs: dict[str, Any], from_dirs: dict[str, Any]) -> dict[str, Any]:
    """Both contenders' figures for one task, the cross-checks, and the children's other results."""
    from align.reward.formats import load_groups

    groups = load_groups(data["heldout_file"])
    line: dict[str, Any] = {c: contender_figures(task, data, runs[c], groups) for c in CONTENDERS}
    everything = [True] * len(groups)
    stage = runs["ours"]["stage_figures"]
    line["checks"] = {
        **{f"{c}_saved_max_abs_diff": max_abs_diff(runs[c]["after"], from_dirs[c]) for c in CONTENDERS},
        "saved_groups_checked": len(from_dirs["ours"]),
        "ours_stage_eval_accuracy": round(stage["eval/accuracy"], 4),
        "bench_accuracy_of_stage_scores": pair_accuracy(groups, runs["ours"]["after"], everything),
        "ours_stage_eval_before_accuracy": round(stage["eval_before/accuracy"], 4),
        "bench_accuracy_of_stage_scores_before": pair_accuracy(groups, runs["ours"]["before"], everything),
        "trl_pairs_trained_equals_ours": runs["trl"]["pairs_trained"] == data["train_pairs"],
        # from the same start (the default) both read the same untrained rewards; after training they differ by
        # the dropout masks and summation order alone, where ours' step is TRL's
        **{f"{when}_max_abs_diff_ours_trl": max_abs_diff(runs["ours"][when], runs["trl"][when])
           for when in ("before", "after")},
    }
    line["paired_fit"] = paired_difference(
        paired_tally(groups, runs["ours"]["after"], runs["trl"]["after"], data["heldout_fits"]))
    line["raw"] = {c: {k: v for k, v in runs[c].items() if k not in ("before", "after")} for c in CONTENDERS}
    return line


def targets(hh: dict[str, Any]) -> dict[str, Any]:
    """The issue's three targets on the HH pairs that fit both."""
    ours, trl = hh["ours"], hh["trl"]
    return {
        "accuracy_ours_ge_trl_minus_0.01": {"ours": ours["accuracy_after_fit"], "trl": trl["accuracy_after_fit"],
                                             "met": ours["accuracy_after_fit"] >= trl["accuracy_after_fit"] - 0.01},
        "time_per_pair_ours_le_trl": {"ours": ours["sec_per_pair"], "trl": trl["sec_per_pair"],
                                      "ratio": round(ours["sec_per_pair"] / trl["sec_per_pair"], 3),
                                      "cpu_ratio": round(ours["cpu_s_per_pair"] / trl["cpu_s_per_pair"], 3),
                                      "met": ours["sec_per_pair"] <= trl["sec_per_pair"]},
        "peak_rss_ours_le_trl": {"ours": ours["peak_rss_mb"], "trl": trl["peak_rss_mb"],
                                 "ratio": round(ours["peak_rss_mb"] / trl["peak_rss_mb"], 3),
                                 "met": ours["peak_rss_mb"] <= trl["peak_rss_mb"]},
    }


# ---------------------------------------------------------------- the parent


def child(role: str, spec: dict[str, Any], path: Path, args: argparse.Namespace) -> dict[str, Any]:
    path.write_text(json.dumps(spec))
    env = {"OMP_NUM_THREADS": str(args.threads)}
    # ours as the `align` command runs it; TRL as its users run it, on the system's malloc
    return common.run_child([sys.executable, "-m", "bench.rm_quality", "--child", role, str(path)],
                            timeout=args.child_timeout, env=common.as_align_runs(env) if role != "trl" else env)


def shared_overrides(args: argparse.Namespace, workload: dict[str, Any], *own: str) -> list[str]:
    """The preset settings every run of the bench changes, then a caller's `own`, the workload's and --set's
    last (they win)."""
    return [f"model.name={workload['model']}", f"data.max_length={args.max_length}", "tracking.wandb=false", *own,
            *workload["extra"], *args.set]


def train_task(task: str, data: dict[str, Any], args: argparse.Namespace, workload: dict[str, Any], work: Path,
               order: tuple[str, ...]) -> dict[str, Any]:
    """Train each contender in a process of its own; their results by contender."""
    overrides = shared_overrides(args, workload, "tracking.logging_steps=1")
    runs = {}
    for contender in order:
        spec = {"preset": str(args.preset), "overrides": overrides, "train": data["train_file"],
                "heldout": data["heldout_file"], "out_dir": str(work / f"{task}-{contender}"), "threads": args.threads,
                "train_pairs": data["train_pairs"], "trl_per_device_batch": args.trl_per_device_batch,
                "start": None if args.own_start else str(work / f"{task}-start")}
        runs[contender] = child(contender, spec, work / f"{task}-{contender}.json", args)
        runs[contender]["out_dir"] = spec["out_dir"]
        print(f"# {task} {contender}: {runs[contender]['process_wall_s']} s, peak {runs[contender]['peak_rss_mb']} MB",
              file=sys.stderr)
    return runs


PROFILE_VARIANTS = {  # name -> (layout, heap: see settle_heap)
    "shipped": ("shipped", "mmap_1mb"), "completions_cut": ("completions_cut", "mmap_1mb"),
    "shipped_default_heap": ("shipped", "dynamic"), "completions_cut_default_heap": ("completions_cut", "dynamic"),
    "shipped_mmap_2mb": ("shipped", "mmap_2mb"), "shipped_trim_each_backward": ("shipped", "trim_each_backward"),
}


def settle_heap(setting: str, learner: Any) -> None:
    """The C heap of a profiled step. mmap_1mb: the stage's (heap.large_buffers_from_mmap, buffers of 1 MB and
    more mapped and unmapped on their own); dynamic: glibc's default, its mmap threshold rising to 32 MB as
    large buffers are freed; mmap_2mb: the threshold fixed at 2 MB; trim_each_backward: dynamic, the heap's
    free pages handed back (malloc_trim) after every micro-batch's backward."""
    from align.core import heap

    if setting == "mmap_1mb":
        heap.large_buffers_from_mmap()
    elif setting == "mmap_2mb":
        heap._libc().mallopt(heap.M_MMAP_THRESHOLD, 2 * heap.LARGE_BUFFER_BYTES)
    elif setting == "trim_each_backward":
        backward = learner.accelerator.backward

        def trimmed(*args: Any, **kwargs: Any) -> None:
            backward(*args, **kwargs)
            heap.trim()

        learner.accelerator.backward = trimmed
    elif setting != "dynamic":
        raise ValueError(f"unknown heap setting {setting!r}")


def profile(args: argparse.Namespace, workload: dict[str, Any], data: dict[str, Any], work: Path) -> dict[str, Any]:
    """Ours' step on the first --profile-pairs training pairs, each variant in a process of its own: minimum
    CPU and wall seconds over the repetitions, and the peak RSS of the steps (loading excluded)."""
    overrides = shared_overrides(args, workload)
    out = {}
    for name in args.profile_variants:
        layout, heap_setting = PROFILE_VARIANTS[name]
        spec = {"preset": str(args.preset), "overrides": overrides, "train": data["train_file"],
                "heldout": data["heldout_file"], "out_dir": str(work / "profile"), "threads": args.threads,
                "pairs": args.profile_pairs, "reps": args.profile_reps, "layout": layout, "heap": heap_setting}
        run = child("profile", spec, work / f"profile-{name}.json", args)
        steps = run["steps"]
        out[name] = {"cpu_s": min(s["cpu_s"] for s in steps), "wall_s": min(s["wall_s"] for s in steps),
                     "step_peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
                     "process_peak_rss_mb": run["peak_rss_mb"],
                     **{k: steps[0][k] for k in ("padded_tokens", "nograd_padded_tokens", "micro_batches")},
                     "steps": steps}
        common.emit({"workload": f"rm_quality_profile_{name}", **{k: v for k, v in out[name].items() if k != "steps"}})
    return out


def prepare(args: argparse.Namespace, workload: dict[str, Any], work: Path) -> dict[str, Any]:
    from align.core import modeling

    tokenizer = modeling.load_tokenizer(modeling.resolve_model_path(workload["model"]))
    data = {"hh": prepare_task("hh", "hh-rlhf", args.hh, args.train_pairs, args.heldout_pairs, args.max_length,
                               tokenizer, args.seed, work)}
    if not args.no_oasst:
        data["oasst"] = prepare_task("oasst", "oasst", args.oasst, args.oasst_train_groups, args.oasst_heldout_groups,
                                     args.max_length, tokenizer, args.seed, work)
    return data


def settings(args: argparse.Namespace, workload: dict[str, Any]) -> dict[str, Any]:
    """The identical settings both train with, read back from the config ours builds."""
    from align.core.config import to_dict
    from align.stages import stage_config

    config = stage_config("reward", args.preset, shared_overrides(args, workload))
    t = config.training
    return {
        "workload": "tiny" if args.tiny else "smollm2", "preset": str(args.preset), "set": args.set,
        "model": to_dict(config.model), "training": to_dict(t), "max_length": args.max_length,
        "split_seed": args.seed, "split_seeds": args.seeds, "threads": args.threads,
        "hh_file": str(args.hh), "oasst_file": None if args.no_oasst else str(args.oasst),
        "trl": {"start": "its own draw" if args.own_start else "ours' initial trainable weights and pair order",
                "per_device_train_batch_size": args.trl_per_device_batch,
                "gradient_accumulation_steps": t.batch_size * t.grad_accum // args.trl_per_device_batch,
                "bf16": False, "disable_dropout": False, "adapters_cast_to_fp32": True,
                "gradient_checkpointing": t.gradient_checkpointing,
                "quantization_config": "align's: NF4, double quantisation, fp32 compute, score head not quantised",
                "input": "token ids of align's conversation_text (chosen_ids/rejected_ids)"},
        "dir_check_groups": args.dir_check_groups,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("ROLE", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the test fixtures (~1 min)")
    parser.add_argument("--train-pairs", type=int, help="HH training pairs (that fit max_length); default 128, tiny 2")
    parser.add_argument("--heldout-pairs", type=int, help="HH held-out pairs (whole prompts); default 128, tiny 2")
    parser.add_argument("--max-length", type=int, help="tokens per prompt + completion, for both; default 512, tiny 64")
    parser.add_argument("--oasst-train-groups", type=int, help="OpenAssistant training rankings; default 16, tiny 1")
    parser.add_argument("--oasst-heldout-groups", type=int, help="OpenAssistant held-out rankings; default 24, tiny 2")
    parser.add_argument("--no-oasst", action="store_true", help="skip the OpenAssistant top-1 figure")
    parser.add_argument("--trl-per-device-batch", type=int, default=1,
                        help="pairs in one TRL forward pass (gradient accumulation makes up the step's 16); 1 bounds a "
                             "pass by 2 x max_length tokens, as ours' max_tokens_per_batch bounds its own")
    parser.add_argument("--dir-check-groups", type=int, default=16,
                        help="held-out groups scored again from each saved model directory")
    parser.add_argument("--profile", action="store_true",
                        help="instead: where ours' step time goes (layout, heap); writes rm_quality-profile.json")
    parser.add_argument("--profile-pairs", type=int, default=8, help="with --profile: pairs in the fixed batch")
    parser.add_argument("--profile-reps", type=int, default=2, help="with --profile: steps per variant")
    parser.add_argument("--profile-variants", nargs="+", choices=list(PROFILE_VARIANTS), default=list(PROFILE_VARIANTS),
                        help="with --profile: which layouts and heap settings (default: all)")
    parser.add_argument("--hh", type=Path, help="HH-RLHF transcripts (jsonl or jsonl.gz)")
    parser.add_argument("--oasst", type=Path, help="OpenAssistant trees (jsonl or jsonl.gz)")
    parser.add_argument("--preset", type=Path, default=PRESET)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a preset setting for both contenders (TRL's settings are read from the same config), "
                             "e.g. --set training.learning_rate=1e-3; repeatable")
    parser.add_argument("--own-start", action="store_true",
                        help="TRL draws its own initial LoRA weights and pair order (default: ours', see above)")
    parser.add_argument("--seed", type=int, help="the held-out split's shuffle; default 0, tiny 2")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")],
                        help="several splits, one after another (e.g. 0,1,2): rm_quality-splits.json, rewritten after each "
                             "split, with the paired accuracy difference pooled over them (HH)")
    parser.add_argument("--pool", nargs="+", type=Path, metavar="SPLITS_JSON",
                        help="instead: pool the splits of several --seeds runs of the same settings (run apart, e.g. "
                             "one a core) into rm_quality-splits-pooled.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child-timeout", type=float, default=7200)
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="folder for rm_quality[-tiny].json")
    parser.add_argument("--workdir", type=Path, help="converted data, specs and models (default: a temp folder)")
    args = parser.parse_args(argv)
    workload = WORKLOADS["tiny" if args.tiny else "smollm2"]
    for key in ("train_pairs", "heldout_pairs", "max_length", "oasst_train_groups", "oasst_heldout_groups",
                "hh", "oasst", "seed"):
        if getattr(args, key) is None:
            setattr(args, key, workload[key])
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        role, spec_path = args.child
        spec = json.loads(Path(spec_path).read_text())
        return {"ours": ours_child, "trl": trl_child, "score": score_child, "profile": profile_child}[role](spec)
    if args.pool:
        return write(args, "rm_quality-splits-pooled", pool_files(args.pool))
    workload = WORKLOADS["tiny" if args.tiny else "smollm2"]
    machine = common.machine()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rm_quality-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# workdir {work}", file=sys.stderr)
    if args.profile:
        args.no_oasst = True
    if args.seeds:
        args.seed = args.seeds[0]
    data = prepare(args, workload, work)
    name = "rm_quality" + ("-profile" if args.profile else "") + ("-tiny" if args.tiny else "")
    versions = common.versions("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")
    header = {"benchmark": name, "machine": machine, "versions": versions,
              "settings": settings(args, workload),
              "data": data_summary(data)}
    if args.profile:
        return write(args, name, {**header, "results": profile(args, workload, data["hh"], work), "note": PROFILE_NOTE})
    if not args.seeds:
        results, score_process = run_split(args, workload, data, work)
        return write(args, name, {**header, "results": results, "score_process": score_process,
                                  "targets": targets(results["hh"]), "note": NOTE})
    # several splits: the held-out pairs of one split are too few to tell two trainers 0.01 apart
    splits = []
    for n, seed in enumerate(args.seeds):
        split_dir = work / f"split-{seed}"
        split_dir.mkdir(parents=True, exist_ok=True)
        if seed != args.seed:  # the first split's data is prepared above
            args.seed = seed
            data = prepare(args, workload, split_dir)
        results, score_process = run_split(args, workload, data, split_dir, first=n)
        splits.append({"split_seed": seed, "data": data_summary(data), "results": results,
                       "score_process": score_process})
        write(args, name + "-splits", {**header, "splits": splits, "pooled": pooled(splits), "note": NOTE})


def data_summary(data: dict[str, Any]) -> dict[str, Any]:
    """The prepared tasks as the results file records them (without the per-group fit flags)."""
    return {task: {k: v for k, v in d.items() if k != "heldout_fits"} for task, d in data.items()}


def run_split(args: argparse.Namespace, workload: dict[str, Any], data: dict[str, Any], work: Path,
              first: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both contenders on one split's tasks, then the saved-directory check: figures by task. `first` turns
    the order in which the contenders take their turns (the split's number when there are several)."""
    runs = {}
    for i, task in enumerate(data, start=first):
        # the machine's load drifts: alternate who goes first, where TRL need not wait for ours' start
        order = CONTENDERS if i % 2 == 0 or not args.own_start else CONTENDERS[::-1]
        runs[task] = train_task(task, data[task], args, workload, work, order)
    tasks = {task: {"models": {c: runs[task][c]["out_dir"] for c in CONTENDERS}, "heldout": data[task]["heldout_file"]}
             for task in runs}
    from_dirs = child("score", {"tasks": tasks, "groups": args.dir_check_groups, "max_length": args.max_length,
                                "threads": args.threads}, work / "score.json", args)
    results = {}
    for task in data:
        results[task] = task_figures(task, data[task], runs[task], from_dirs[task])
        common.emit({"workload": f"rm_quality_{task}", **{c: results[task][c] for c in CONTENDERS}})
    return results, {"peak_rss_mb": from_dirs["peak_rss_mb"], "process_wall_s": from_dirs["process_wall_s"]}


def pooled(splits: list[dict[str, Any]]) -> dict[str, Any]:
    """The HH figures over every split so far: the paired difference on all their held-out pairs that fit,
    the issue's targets on the pooled accuracies and the mean seconds and peaks, and each split's own line."""
    lines = [s["results"]["hh"] for s in splits]
    tally = {k: sum(line["paired_fit"][k] for line in lines) for k in ("both", "ours_only", "trl_only", "neither")}
    mean = {c: {k: round(sum(line[c][k] for line in lines) / len(lines), 4)
                for k in ("accuracy_before_fit", "accuracy_after_fit", "sec_per_pair", "cpu_s_per_pair", "peak_rss_mb")}
            for c in CONTENDERS}
    paired = paired_difference(tally)
    # the accuracy target on every held-out pair that fits, pooled (a split's mean would weigh its pairs unevenly)
    for c, alone in (("ours", "ours_only"), ("trl", "trl_only")):
        mean[c]["accuracy_after_fit"] = round((tally["both"] + tally[alone]) / paired["pairs"], 4)
    return {"splits": len(splits), "paired_fit": paired, "pooled_and_mean": mean, "targets": targets(mean),
            "by_split": [{"split_seed": s["split_seed"], **{c: s["results"]["hh"][c]["accuracy_after_fit"]
                                                            for c in CONTENDERS},
                          "difference": s["results"]["hh"]["paired_fit"]["difference"]} for s in splits]}


def pool_files(paths: list[Path]) -> dict[str, Any]:
    """The splits of several rm_quality-splits.json files, pooled as one --seeds run would pool them; their
    settings must agree but for the split seeds, and no split may come twice."""
    bodies = [json.loads(Path(p).read_text()) for p in paths]

    def shared(body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body["settings"].items() if k not in ("split_seed", "split_seeds")}

    first = shared(bodies[0])
    for path, body in zip(paths[1:], bodies[1:]):
        mine = shared(body)
        if mine != first:
            differ = sorted(k for k in {*mine, *first} if mine.get(k) != first.get(k))
            raise SystemExit(f"{path}: settings differ from {paths[0]}'s: {', '.join(differ)}")
    splits = [s for body in bodies for s in body["splits"]]
    seeds = [s["split_seed"] for s in splits]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"a split comes twice: split seeds {seeds}")
    return {"benchmark": bodies[0]["benchmark"], "versions": bodies[0]["versions"],
            "settings": {**first, "split_seeds": seeds}, "machine": common.machine(),
            "runs": [{"file": str(p), "machine": b["machine"]} for p, b in zip(paths, bodies)],
            "splits": splits, "pooled": pooled(splits), "note": NOTE}


NOTE = ("2-core machine shared with other engineers' jobs; one run per contender, each in a process of its own with "
        "one thread; peak RSS via wait4 of each child; timings noisy, memory not.")


PROFILE_NOTE = ("one batch of the first training pairs through reward.micro_batches.backward. shipped: the stage's "
                "Batcher (whole groups a micro-batch within the token budget); completions_cut: the layout before "
                "2026-12-05 22:54 UTC (completions sorted by length and cut at the budget, groups split, every "
                "micro-batch run twice: gradient cache); *_default_heap: without the stage's 1 MB mmap threshold "
                "(heap.large_buffers_from_mmap); shipped_mmap_2mb: the threshold at 2 MB; shipped_trim_each_backward: "
                "glibc's dynamic threshold, malloc_trim after every micro-batch's backward. Each in a process of its "
                "own with --threads threads; minimum over repetitions.")


def write(args: argparse.Namespace, name: str, body: dict[str, Any]) -> None:
    body["machine"] = {**body["machine"], "load_average_at_end": list(os.getloadavg())}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(body, indent=2) + "\n")
    print(f"# wrote {path}", file=sys.stderr)

if __name__ == "__main__":
    main()
