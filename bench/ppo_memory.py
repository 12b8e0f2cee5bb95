"""Peak memory of PPO: four separate models against our one shared base with adapters (issue #5).

    .venv/bin/python -m bench.ppo_memory [--updates 2] [--workload smollm2_360m_shape|llama_1b_shape] [--variants none:plain,nf4:gc]
    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python -m bench.ppo_memory --variants none:plain   # live memory

SmolLM2-135M (or, with --workload, SmolLM2-360M's or Llama-3.2-1B's shape with random weights), full
precision (fp32) and 4-bit (NF4, double quantisation) with the training activations kept for
backward, and 4-bit with them recomputed (`training.gradient_checkpointing`, applied
to every trainable model of both layouts). Each run is a process of its own, two at a time (one per
core: a peak RSS is the child's own, whatever runs beside it), and makes the same PPO updates of our
trainer (align.ppo.train.PPOTrainer.step) on the ppo_vs_trl workload; within a variant only the
layout of the models differs:

    shared  PolicyStack: one frozen base; policy and value LoRA adapters, value head; the reference
            is the base with adapters off; the reward is a head on the base
    four    FourModels below: policy (base copy + LoRA), reference (base copy), value (base copy +
            LoRA + head) and reward (base copy + head), each its own model, as a PPO trainer
            without a shared base keeps them

Same adapters, same heads, same algorithm: the difference is the number of copies of the base.
Figures per layout: the process's peak RSS (wait4); `ppo_mb`, that peak above the process's size
after its imports, before any model loaded (PPO's own memory, Python and the libraries left out);
`models_mb`, the size after the first rollout above the same mark (every model has run once, so
all weights are resident: safetensors are mapped in lazily), before any activation of training.
RSS counts each of four fp32 copies, as a GPU would hold them, though on the CPU the copies are
mappings of one checkpoint file and share their pages (PSS counts those once); 4-bit copies are
each quantised into memory of their own.
With glibc's MALLOC_MMAP_THRESHOLD_ set, every buffer above it is unmapped when freed, so the peak
is what PPO holds live (as a GPU's allocator counts it) rather than the freed pages the C heap
keeps; the results file is then named after the threshold. Not for training: 28% slower on SmolLM2.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import common

THREADS = 1  # as bench/ppo_vs_trl.py: robust on a shared machine; memory does not depend on it
PARALLEL = 2  # runs side by side, one per core: memory is what is measured here, not time
# (precision, activations): kept for backward ("plain") or recomputed there (training.gradient_checkpointing, "gc");
# recomputation with the 4-bit base only, as the QLoRA presets for 24 GB GPUs run (make bench stays under 20 min)
VARIANTS = (("none", "plain"), ("nf4", "plain"), ("nf4", "gc"))


def four_models_class():
    """Built lazily: torch and align load in the child only."""
    import torch
    from torch import nn

    from align.core import modeling
    from align.ppo.models import POLICY, REF, PolicyStack, position_ids
    from align.reward.score import HEAD_FILE, Normaliser, weights_dir

    class FourModels(nn.Module):
        """PPO's four models as four copies of the base, with PolicyStack's interface."""

        def __init__(self, model_config: modeling.ModelConfig, tokenizer: Any, reward_path: str | None, *,
                     gradient_checkpointing: bool = False, **ensemble: Any):  # one reward model: no ensemble
            super().__init__()
            from peft import get_peft_model
            from safetensors.torch import load_file

            from align.core import tuning

            def base(trainable: bool):
                model = modeling.load_base(model_config, tokenizer)
                for module in model.modules():
                    if isinstance(module, nn.Dropout):
                        module.p = 0.0
                if trainable:  # the preparation PolicyStack's shared base gets, from the same builder
                    return tuning.prepare_for_training(model, model_config, gradient_checkpointing=gradient_checkpointing)
                return model.requires_grad_(False).eval()

            config = tuning.lora_config(model_config.lora, "CAUSAL_LM", dropout=0.0)
            self.peft = get_peft_model(base(True), copy.deepcopy(config), adapter_name=POLICY)
            self.ref = base(False)
            self.value_model = get_peft_model(base(True), copy.deepcopy(config), adapter_name="value")
            self.reward_model = base(False)
            hidden = self.peft.config.hidden_size
            head = load_file(weights_dir(reward_path) / HEAD_FILE)["weight"]
            self.reward_head = nn.Linear(hidden, 1, bias=False).requires_grad_(False)
            self.reward_head.weight.data.copy_(head)
            self.value_head = nn.Linear(hidden, 1, bias=True)
            self.value_head.weight.data.copy_(head)
            nn.init.zeros_(self.value_head.bias)
            self.normaliser = Normaliser()
            self.shares_reward = True
            self.last_members = None  # the members' scores of an ensemble: none here
            for model in (self.peft, self.value_model):
                modeling.cast_trainable_to_fp32(model)
            # the rollout toggles only .peft between eval and train; checkpointing acts in train mode alone
            self.value_model.train()

        @property
        def device(self) -> torch.device:
            return next(self.peft.parameters()).device

        def named_trainable(self) -> dict[str, nn.Parameter]:
            out = {f"policy.{n}": p for n, p in self.peft.named_parameters() if p.requires_grad}
            out.update({f"value.{n}": p for n, p in self.value_model.named_parameters() if p.requires_grad})
            out.update({f"value_head.{n}": p for n, p in self.value_head.named_parameters()})
            return out

        def trainable_parameters(self) -> list[nn.Parameter]:
            return list(self.named_trainable().values())

        def use(self, name: str) -> None:
            """Each model has its own weights: nothing to switch."""

        def policy_logits(self, input_ids, attention_mask, n_last, adapter=POLICY):
            model = self.ref if adapter == REF else self.peft
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                        logits_to_keep=n_last + 1)
            return out.logits[:, :-1]

        def values(self, input_ids, attention_mask, n_last):
            inner = self.value_model.base_model.model.model
            hidden = inner(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids(attention_mask)).last_hidden_state[:, -n_last - 1:-1]
            return self.value_head(hidden.float()).squeeze(-1)

        def rewards(self, input_ids, attention_mask, last_index):
            hidden = self.reward_model.model(input_ids=input_ids, attention_mask=attention_mask,
                                             position_ids=position_ids(attention_mask)).last_hidden_state
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
            return self.reward_head(picked.float()).squeeze(-1)

        # the policy samples as the shared stack's does (its `use` and `peft` are this class's own)
        sample = PolicyStack.sample

    return FourModels


def child(layout: str, quantization: str, checkpointing: str, updates: int, workdir: str) -> None:
    import torch

    torch.set_num_threads(THREADS)
    before_load = common.current_rss_mb()
    import peft  # noqa: F401  (and with it transformers and bitsandbytes: loaded lazily otherwise, after the mark)

    from align.core import rundir
    from align.core.config import load_config
    from align.core.records import load_records
    from align.ppo import train as ppo_train
    from align.ppo.config import PPOConfig
    from bench import workloads
    from bench.ppo_vs_trl import SETTINGS

    imported = common.current_rss_mb()
    if layout == "four":
        ppo_train.PolicyStack = four_models_class()  # the trainer builds its models through this name
    s = SETTINGS["smollm2"]
    paths = workloads.paths(Path(workdir) / f"workload-{quantization}")
    config = load_config(PPOConfig, None, [
        f"out_dir={Path(workdir) / f'{layout}-{quantization}-{checkpointing}'}", f"model.name={paths['model_path']}",
        f"training.gradient_checkpointing={checkpointing == 'gc'}",
        f"model.quantization={quantization}", f"model.lora.r={s['lora_r']}", f"model.lora.alpha={s['lora_alpha']}",
        f"reward.model={paths['reward_dir']}", "reward.no_eos_penalty=null",
        f"data.prompts={paths['prompts']}", "data.eval_prompts=null",
        f"training.batch_size={s['batch_size']}", f"training.mini_batch_size={s['mini_batch_size']}", "training.ppo_epochs=1",
        f"generation.max_new_tokens={s['max_new_tokens']}", "tracking.wandb=false",
    ])
    out = rundir.StageDir(config.out_dir)
    out.prepare(overwrite=True, resume=False)
    start = time.perf_counter()
    trainer = ppo_train.PPOTrainer(config, out)
    load_s = time.perf_counter() - start
    loaded = common.current_rss_mb()
    after_rollout = []
    real_rollout = ppo_train.make_rollout

    def make_rollout(*a, **k):
        # every model has run once: its weights are resident (safetensors are mapped lazily)
        rollout = real_rollout(*a, **k)
        after_rollout.append(common.current_rss_mb())
        return rollout

    ppo_train.make_rollout = make_rollout
    common.reset_peak_rss()
    batch = load_records(config.data.prompts, "prompts")[: s["batch_size"]]
    times = []
    for _ in range(updates):
        start = time.perf_counter()
        trainer.step(batch)
        times.append(time.perf_counter() - start)
    common.report({
        "layout": layout, "quantization": quantization, "checkpointing": checkpointing, "load_s": load_s, "update_s": times,
        "rss_before_import_mb": before_load, "rss_after_import_mb": imported, "rss_after_load_mb": loaded,
        "rss_after_rollout_mb": after_rollout[0],
        "train_peak_rss_mb": common.hwm_mb(),
        "trainable_params": sum(p.numel() for p in trainer.stack.trainable_parameters()),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--updates", type=int, default=1)
    parser.add_argument("--workload", default="smollm2", choices=["smollm2", "smollm2_360m_shape", "llama_1b_shape"],
                        help="SmolLM2-360M's or Llama-3.2-1B's shape with random weights (not in make bench)")
    parser.add_argument("--variants", default=",".join(f"{q}:{c}" for q, c in VARIANTS),
                        help="precision:activations pairs, e.g. none:plain,nf4:gc")
    args = parser.parse_args()
    if args.child:
        return child(*args.child[:3], args.updates, args.child[3])
    import tempfile

    from concurrent.futures import ThreadPoolExecutor

    machine = common.machine()
    variants = [tuple(v.split(":")) for v in args.variants.split(",")]
    results: dict[str, dict[str, Any]] = {}

    def run(tmp: str, layout: str, quantization: str, checkpointing: str) -> None:
        argv = [sys.executable, "-m", "bench.ppo_memory", "--updates", str(args.updates),
                "--child", layout, quantization, checkpointing, tmp]
        r = common.run_child(argv, env={"OMP_NUM_THREADS": str(THREADS)})
        r["ppo_mb"] = r["peak_rss_mb"] - r["rss_after_import_mb"]
        r["models_mb"] = r["rss_after_rollout_mb"] - r["rss_after_import_mb"]
        results[f"{layout}_{quantization}_{checkpointing}"] = r
        print(f"# ppo memory {layout} {quantization} {checkpointing}: {r['peak_rss_mb']} MB, "
              f"{r['process_wall_s']} s", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="align-bench-mem-") as tmp:
        # each workload file once, before runs side by side would write it together
        from bench import workloads

        for quantization in dict.fromkeys(q for q, _ in variants):
            workloads.prepare(args.workload, Path(tmp) / f"workload-{quantization}", quantization=quantization)
        # a peak RSS is the child's own whatever runs beside it, so runs go PARALLEL at a time (the
        # longer four-model runs first); their update seconds are then not timings to compare
        with ThreadPoolExecutor(PARALLEL) as pool:
            jobs = [pool.submit(run, tmp, layout, q, c) for layout in ("four", "shared") for q, c in variants]
            for job in jobs:
                job.result()
    lines = []
    for quantization, checkpointing in variants:
        shared, four = (results[f"{layout}_{quantization}_{checkpointing}"] for layout in ("shared", "four"))
        label = {"none": "fp32", "nf4": "nf4"}[quantization] + ("_gc" if checkpointing == "gc" else "")
        line = {"workload": f"{args.workload}_{label}"}
        for name, r in (("shared", shared), ("four_models", four)):
            line[name] = {"peak_rss_mb": r["peak_rss_mb"], "ppo_mb": round(r["ppo_mb"], 1),
                          "models_mb": round(r["models_mb"], 1),
                          "after_load_mb": round(r["rss_after_load_mb"], 1),
                          "train_peak_rss_mb": round(r["train_peak_rss_mb"], 1),
                          "sec_per_update": round(common.median(r["update_s"][1:] or r["update_s"]), 2)}
        line["ratios"] = {"mem_vs_four": round(shared["peak_rss_mb"] / four["peak_rss_mb"], 3),
                          "ppo_mem_vs_four": round(shared["ppo_mb"] / four["ppo_mb"], 3),
                          "models_mem_vs_four": round(shared["models_mb"] / four["models_mb"], 3)}
        common.emit(line)
        lines.append(line)
    # glibc's MALLOC_MMAP_THRESHOLD_ (bytes), when set, maps every larger buffer and unmaps it at free:
    # RSS then follows what PPO holds live, as a GPU's allocator counts it, not the pages the heap keeps
    mmap_threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    name = "ppo_memory" if args.workload == "smollm2" else f"ppo_memory-{args.workload}"
    common.save(name + (f"-mmap{mmap_threshold}" if mmap_threshold else ""), {
        "machine": machine,
        "versions": common.versions("torch", "transformers", "peft", "bitsandbytes"),
        "settings": {"model": args.workload, "updates": args.updates, "ppo_epochs": 1, "threads": THREADS,
                     "runs_side_by_side": PARALLEL, "malloc_mmap_threshold": mmap_threshold,
                     "variants": [list(v) for v in variants],
                     "batch_size": 8, "mini_batch_size": 4, "max_new_tokens": 24, "lora": "r=16 all-linear"},
        "note": "each configuration in its own process; peak RSS via wait4 of the child; ppo_mb = peak RSS minus "
                "the RSS after imports (before any model loaded). Two runs at a time, one per core: memory figures "
                "are each child's own, the update times are not comparable timings.",
        "results": lines,
        "runs": results,
    })


if __name__ == "__main__":
    main()
