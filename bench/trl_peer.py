"""The peer: TRL 1.12.0's PPOTrainer (trl.experimental.ppo) on a workload from bench/workloads.py.
Runs in its own venv (.venv-trl112), one process per run; imports nothing of align.

    .venv-trl112/bin/python -m bench.trl_peer SPEC.json shipped|nogc

How it is timed, without editing TRL: the module-level functions its train() loop calls are
wrapped in this process before train() starts.

    generation_s  batch_generation (sampling; TRL keeps the sampling logits for log pi_old)
    forward_s     the no-grad rollout passes: forward() for the reference (adapter disabled) and
                  get_reward() on the value model
    scoring_s     get_reward() on the reward model
    training_s    from the first np.random.permutation of an update (the start of its PPO epochs)
                  to its self.log() (the end of the epochs and the metrics)
    gc_s          gc.collect(), which TRL calls twice per update
    sec_per_update  the time between consecutive self.log() calls: the whole loop body (the first
                  update: from the start of train()); cpu_s_per_update, the process's CPU time over it

`nogc` makes gc.collect a no-op in this process, to show TRL's time without those two calls.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from bench.common import report


def main(spec_path: str, variant: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    clock = defaultdict(float)
    real_collect = gc.collect

    def collect(generation: int = 2) -> int:
        if variant == "nogc":
            return 0
        start = time.perf_counter()
        try:
            return real_collect(generation)
        finally:
            clock["gc_s"] += time.perf_counter() - start

    gc.collect = collect

    import numpy as np
    import torch
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from peft import LoraConfig
    from safetensors.torch import load_file
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(spec["threads"])
    load_start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_path"])
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32)
    head = load_file(spec["reward_head"])["weight"]

    def scalar_model():
        model = AutoModelForSequenceClassification.from_pretrained(spec["model_path"], num_labels=1,
                                                                   dtype=torch.float32)
        model.score.weight.data.copy_(head)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    # TRL's PPO example: the value model starts as a copy of the reward model and trains in full
    reward_model, value_model = scalar_model(), scalar_model()
    for model in (policy, reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    prompt_ids = json.loads(Path(spec["prompt_ids"]).read_text())
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    s = spec["settings"]
    args = PPOConfig(
        output_dir=str(Path(spec["workdir"]) / f"peer-{variant}-{spec['seed']}"),
        per_device_train_batch_size=s["batch_size"],  # x gradient_accumulation_steps = the rollout batch
        gradient_accumulation_steps=1,
        num_mini_batches=s["batch_size"] // s["mini_batch_size"],
        num_ppo_epochs=s["ppo_epochs"],
        total_episodes=s["batch_size"] * s["updates"],
        local_rollout_forward_batch_size=s["batch_size"],
        response_length=s["max_new_tokens"],
        temperature=s["temperature"],
        stop_token="eos",  # ours stops and truncates at EOS too
        missing_eos_penalty=None,  # ours: reward.no_eos_penalty=null
        learning_rate=s["learning_rate"],
        adam_epsilon=s["adam_eps"],
        weight_decay=0.0,
        lr_scheduler_type="linear",
        kl_coef=s["kl_coef"],
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        whiten_rewards=False,
        num_sample_generations=0,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        bf16=False,
        fp16=False,
        use_cpu=True,
        seed=spec["seed"],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=0.0,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None,
                         reward_model=reward_model, train_dataset=dataset, value_model=value_model,
                         eval_dataset=dataset, peft_config=peft_config)
    load_s = time.perf_counter() - load_start

    def timed(name, fn, when=lambda *a, **k: True):
        def wrapper(*a, **k):
            if not when(*a, **k):
                return fn(*a, **k)
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock[name] += time.perf_counter() - start
        return wrapper

    ppo_module.batch_generation = timed("generation_s", ppo_module.batch_generation)
    ppo_module.forward = timed("forward_s", ppo_module.forward, lambda *a, **k: not torch.is_grad_enabled())
    real_get_reward = ppo_module.get_reward

    def get_reward(model, *a, **k):
        start = time.perf_counter()
        try:
            return real_get_reward(model, *a, **k)
        finally:
            clock["scoring_s" if model is reward_model else "forward_s"] += time.perf_counter() - start

    ppo_module.get_reward = get_reward
    real_truncate = ppo_module.truncate_response

    def truncate_response(stop_token_id, pad_token_id, responses):
        out = real_truncate(stop_token_id, pad_token_id, responses)
        clock["response_tokens"] += float((out != pad_token_id).sum())
        clock["response_width"] = float(out.shape[1])
        return out

    ppo_module.truncate_response = truncate_response
    real_permutation = np.random.permutation

    def permutation(*a, **k):
        clock.setdefault("train_start", time.perf_counter())  # the first PPO epoch of this update
        return real_permutation(*a, **k)

    np.random.permutation = permutation
    updates: list[dict] = []
    real_log = trainer.log
    last, last_cpu = [0.0], [0.0]

    def log(metrics, *a, **k):
        now, cpu = time.perf_counter(), time.process_time()
        if "objective/scores" in metrics:
            row = {k: v for k, v in clock.items() if k != "train_start"}
            row["training_s"] = now - clock.get("train_start", now)
            row["sec_per_update"] = now - last[0]
            row["cpu_s_per_update"] = cpu - last_cpu[0]
            row["scores"] = metrics["objective/scores"]
            row["kl"] = metrics["objective/kl"]
            row["ratio"] = metrics["val/ratio"]
            updates.append(row)
            last[0], last_cpu[0] = now, cpu
            clock.clear()
        return real_log(metrics, *a, **k)

    trainer.log = log
    if s["warmup_pass"]:
        batch = tokenizer.pad({"input_ids": prompt_ids[: s["batch_size"]]}, return_tensors="pt")
        with torch.no_grad():  # every model this process holds: policy (= reference), value, reward
            for model in (trainer.model.policy, trainer.model.value_model, reward_model):
                model(**batch)
    clock.clear()
    train_start = last[0] = time.perf_counter()
    last_cpu[0] = time.process_time()
    trainer.train()
    import importlib.metadata as md

    report({"updates": updates, "load_s": load_s, "train_s": time.perf_counter() - train_start,
            "versions": {n: md.version(n) for n in ("trl", "torch", "transformers", "peft", "accelerate")},
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
