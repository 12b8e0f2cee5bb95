"""Every GPU figure in one run (issue #26): under 8 minutes on one H100, random-initialised models of real shapes.

    python -m bench.gpu_check --out bench/results             # on the GPU machine (see bench/gpu_check.sh)
    python -m bench.gpu_check --dry-run --out /tmp/x          # the same code paths on the CPU, tiny shapes, seconds

Sections, each in a process of its own with its own time budget (a failure or a timeout in one is
recorded in the JSON as its `error` and the others still run):

    a  SFT step on the Llama-3.2-1B shape: QLoRA (bf16 compute on an NF4 base) and LoRA on a bf16 base;
       tokens/s, MFU, peak GPU memory (modeling.load_base + modeling.attach_tuning, as stage 1 builds it;
       a plain forward / backward / AdamW step as bench/sft_memory.py makes it)
    b  the reward step on the 1B shape (reward.train's learner: _build_learner, micro_batches.backward, the optimiser
       step) on pairs of completions; tokens/s, peak memory
    c  one PPO update of our trainer (align.ppo.train.PPOTrainer.step) on the 1B shape, 64 prompts x 128
       new tokens: phases (generation, no-grad passes, scoring, training), s/update; the shared NF4 base
       against four separate bf16 models (bench.ppo_memory's FourModels): peak memory of each
    d  TRL 1.12's PPOTrainer against ours on SmolLM2-135M (bench.ppo_vs_trl's workload and children);
       skipped, with the reason, where TRL 1.12 is not importable
    e  the Llama-3.1-8B shape in NF4: does our shared-base PPO update fit, peak memory, s/update, 16 x 256

FLOPs and MFU: FLOPs = 6 x parameters x tokens for a training step (forward + backward), 2 x parameters x
tokens for a forward-only pass; parameters are the base model's (embedding included, tied weights once),
whatever trains. MFU = achieved FLOP/s / 989 TFLOP/s (the H100 SXM's dense bf16 peak). Attention's own
FLOPs are left out (short sequences here). Peak memory is torch.cuda.max_memory_allocated of the section's
process (on the CPU in --dry-run: its peak RSS instead, named so in the JSON).

--dry-run: CPU, fp32, quantization none everywhere (bitsandbytes 4-bit on the CPU is slow), the tests'
2-layer model for every shape, one step each, so the script cannot rot; tests/test_gpu_check.py runs it.
Writes <out>/gpu-<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

PEAK_FLOPS = 989e12  # H100 SXM dense bf16 tensor-core peak, FLOP/s
# Llama-3.1-8B's shape (its config.json), with SmolLM2's tokenizer (49 K vocabulary, not Llama's 128 K)
LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128}
SECTIONS = ("a_sft", "b_reward", "c_ppo_1b", "d_ppo_vs_trl", "e_ppo_8b")
# per section: its time budget (s) on the GPU; the whole run stays under 8 minutes
BUDGET_S = {"a_sft": 75, "b_reward": 45, "c_ppo_1b": 120, "d_ppo_vs_trl": 90, "e_ppo_8b": 140}
DRY_BUDGET_S = 120
# what each section runs, on the GPU and in --dry-run
REAL = {
    "sft": {"batch_size": 8, "seq_len": 512, "steps": 3},
    "reward": {"pairs": 8, "seq_len": 512, "steps": 3},
    "ppo_1b": {"batch_size": 64, "mini_batch_size": 16, "max_new_tokens": 128, "updates": 2, "four_updates": 1},
    "ppo_8b": {"batch_size": 16, "mini_batch_size": 8, "max_new_tokens": 256, "updates": 1},
    "trl": {"runs": 1},
}
DRY = {
    "sft": {"batch_size": 2, "seq_len": 32, "steps": 1},
    "reward": {"pairs": 2, "seq_len": 32, "steps": 1},
    "ppo_1b": {"batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 8, "updates": 1, "four_updates": 1},
    "ppo_8b": {"batch_size": 2, "mini_batch_size": 2, "max_new_tokens": 8, "updates": 1},
    "trl": {"runs": 1},
}


# ------------------------------------------------------------------ shared by the children

def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        common.reset_peak_rss()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak() -> dict[str, float]:
    """The process's peak memory: the GPU allocator's, or on the CPU the peak RSS."""
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1)}
    return {"peak_cpu_rss_mb": round(common.peak_rss_mb(), 1)}


def base_params(model_path: str) -> int:
    """The base's parameter count from its config (a meta-device model: no memory; tied weights once).
    Counting a 4-bit model's parameters would count packed bytes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    return sum(p.numel() for p in model.parameters())


def mfu(params: int, tokens_per_s: float, training: bool = True) -> float:
    return (6 if training else 2) * params * tokens_per_s / PEAK_FLOPS


def model_for(shape: str, workdir: Path, dry: bool) -> str:
    """The base model's directory: the tests' tiny model in --dry-run, else a random model of the shape."""

    if dry:
        from align.core.tiny import build_tiny_llama, demo_texts

        path = workdir / "tiny-llama"
        if not (path / "config.json").exists():
            build_tiny_llama(path, demo_texts())
        return str(path)
    return build_shape(shape, workdir)


def build_shape(shape: str, workdir: Path) -> str:
    """A random model of the shape beside the workload dirs (where workloads.prepare looks for it): the 1B
    as workloads.random_like writes it (fp32), the 8B in bf16 (16 GB instead of 32 on disk)."""
    import torch

    from align.core import modeling
    from bench import workloads

    workloads.SHAPES.setdefault("llama_8b_shape", LLAMA_8B)
    path = workdir / shape
    if not (path / "config.json").exists():
        source = modeling.resolve_model_path("smollm2-135m-instruct")
        if shape == "llama_8b_shape":
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)
            try:
                workloads.random_like(path, source, workloads.SHAPES[shape])
            finally:
                torch.set_default_dtype(default)
        else:
            workloads.random_like(path, source, workloads.SHAPES[shape])
    return str(path)


def ensure_source_weights() -> str:
    """SmolLM2-135M-Instruct's directory with weights. Carried to the GPU machine without them
    (bench/gpu_check.sh: config and tokenizer only), it gets random ones of its shape, once."""
    from align.core import modeling
    from bench import workloads

    source = Path(modeling.resolve_model_path("smollm2-135m-instruct"))
    if not any(source.glob("*.safetensors")):
        drawn = Path(tempfile.mkdtemp(prefix="smollm2-random-"))
        workloads.random_like(drawn, str(source), {})
        for weights in drawn.glob("*.safetensors*"):
            shutil.move(str(weights), source / weights.name)
        shutil.rmtree(drawn, ignore_errors=True)
    return str(source)


def random_batch(tokenizer: Any, rows: int, length: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    high = min(len(tokenizer), 32000) if len(tokenizer) > 1000 else len(tokenizer)
    ids = torch.randint(3, high - 1, (rows, length), generator=generator)
    return ids, torch.ones_like(ids)


# ------------------------------------------------------------------ a: SFT

def child_sft(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from align.core import modeling

    s, dry = spec["settings"]["sft"], spec["dry_run"]
    path = model_for("llama_1b_shape", Path(spec["workdir"]), dry)
    params = base_params(path)
    out: dict[str, Any] = {"model": "tiny" if dry else "llama_1b_shape", "params": params,
                           "batch_size": s["batch_size"], "seq_len": s["seq_len"], "timed_steps": s["steps"]}
    modes = {"qlora": "none" if dry else "nf4", "lora": "none"}
    if dry:
        out["note"] = "dry run: fp32 on the CPU, quantization none for both modes (bitsandbytes 4-bit on the CPU is slow)"
    for mode, quantization in modes.items():
        config = modeling.ModelConfig(name=path, quantization=quantization, tuning="lora",
                                      dtype="float32" if dry else "bfloat16")
        config.lora.dropout = 0.0
        tokenizer = modeling.load_tokenizer(path)
        _reset_peak()
        model = modeling.attach_tuning(modeling.load_base(config, tokenizer), config)
        model.train()
        device = next(p for p in model.parameters()).device
        ids, mask = (t.to(device) for t in random_batch(tokenizer, s["batch_size"], s["seq_len"]))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
        times = []
        for _ in range(s["steps"] + 1):  # the first is a warm-up
            _sync()
            start = time.perf_counter()
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync()
            times.append(time.perf_counter() - start)
        step_s = common.median(times[1:])
        tokens_per_s = s["batch_size"] * s["seq_len"] / step_s
        out[mode] = {"quantization": quantization, "compute_dtype": str(config.dtype), "step_s": step_s,
                     "tokens_per_s": tokens_per_s, "mfu": mfu(params, tokens_per_s),
                     "trainable_params": modeling.count_parameters(model)[0], "loss": float(loss), **_peak()}
        del model, optimizer, loss
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------ b: reward step

def child_reward(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import BatchEncoding

    from align.core.config import load_config
    from align.reward import micro_batches
    from align.reward import train as reward_train
    from align.reward.config import RewardConfig

    s, dry = spec["settings"]["reward"], spec["dry_run"]
    path = model_for("llama_1b_shape", Path(spec["workdir"]), dry)
    params = base_params(path)
    config = load_config(RewardConfig, None, [
        f"out_dir={Path(spec['workdir']) / 'reward-run'}", f"model.name={path}",
        f"model.quantization={'none' if dry else 'nf4'}", f"model.dtype={'float32' if dry else 'bfloat16'}",
        "model.lora.dropout=0.0", f"training.batch_size={s['pairs']}", "tracking.wandb=false",
        f"data.max_length={s['seq_len']}"])
    _reset_peak()
    learner = reward_train._build_learner(config, train_groups=s["pairs"] * (s["steps"] + 1))
    learner.model.train()
    n = 2 * s["pairs"]  # chosen and rejected completion of each pair, one micro-batch
    ids, mask = random_batch(learner.tokenizer, n, s["seq_len"])
    batch = {"inputs": [BatchEncoding({"input_ids": ids, "attention_mask": mask})], "micro": [list(range(n))],
             "pairs": torch.tensor([(2 * i, 2 * i + 1) for i in range(s["pairs"])]),
             "pair_group": torch.arange(s["pairs"]), "margins": None, "whole": [True]}
    times = []
    for _ in range(s["steps"] + 1):
        _sync()
        start = time.perf_counter()
        _, loss = micro_batches.backward(learner.accelerator, learner.model, batch, 1.0)
        learner.optimizer.step()
        learner.optimizer.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - start)
    step_s = common.median(times[1:])
    tokens_per_s = n * s["seq_len"] / step_s
    return {"model": "tiny" if dry else "llama_1b_shape", "quantization": config.model.quantization,
            "params": params, "pairs": s["pairs"], "seq_len": s["seq_len"], "step_s": step_s,
            "tokens_per_s": tokens_per_s, "mfu": mfu(params, tokens_per_s), "loss": float(loss),
            "trainable_params": learner.trainable, **_peak()}


# ------------------------------------------------------------------ c, e: our PPO update

def child_ppo(spec: dict[str, Any]) -> dict[str, Any]:
    """One layout (shared or four) of our PPO update on a workload made by workloads.prepare."""
    import torch

    from align.core import rundir
    from align.core.records import load_records
    from align.ppo import train as ppo_train
    from bench import workloads
    from bench.ppo_vs_trl import our_config

    s, layout, quantization = spec["ppo"], spec["layout"], spec["quantization"]
    workloads.SHAPES.setdefault("llama_8b_shape", LLAMA_8B)
    if layout == "four":
        from bench.ppo_memory import four_models_class

        ppo_train.PolicyStack = four_models_class()  # the trainer builds its models through this name
    paths = workloads.paths(Path(spec["workload_dir"]))
    settings = {"lora_r": 16, "lora_alpha": 32, "batch_size": s["batch_size"], "mini_batch_size": s["mini_batch_size"],
                "ppo_epochs": 1, "learning_rate": 1e-5, "max_new_tokens": s["max_new_tokens"]}
    config = our_config(paths, settings, Path(spec["workload_dir"]) / f"run-{layout}",
                        f"model.quantization={quantization}", "training.eval_steps=0", "training.sample_steps=0",
                        f"data.max_prompt_length={max(64, max(paths['query_tokens']))}")
    out = rundir.StageDir(config.out_dir)
    out.prepare(overwrite=True, resume=False)
    _reset_peak()
    start = time.perf_counter()
    trainer = ppo_train.PPOTrainer(config, out)
    load_s = time.perf_counter() - start
    after_load = _peak()
    batch = load_records(config.data.prompts, "prompts")[: s["batch_size"]]
    updates = []
    for u in range(s["updates"]):
        torch.manual_seed(u)
        _sync()
        start = time.perf_counter()
        stats, _ = trainer.step(batch, u)
        _sync()
        updates.append({"sec_per_update": time.perf_counter() - start,
                        **{k.split("/")[1]: stats[f"time/{k.split('/')[1]}"] for k in
                           ("time/generation_s", "time/forward_s", "time/scoring_s", "time/training_s")},
                        "response_length": stats["objective/response_length"]})
    last = updates[-1]  # after a warm-up update where there is one
    return {"layout": layout, "quantization": quantization, "dtype": str(config.model.dtype), "load_s": load_s,
            "params": base_params(paths["model_path"]), "batch_size": s["batch_size"],
            "max_new_tokens": s["max_new_tokens"], "updates": updates, **last,
            "after_load": after_load, **_peak()}


def prepare_ppo(shape: str, workdir: Path, dry: bool, quantization: str, n_prompts: int) -> Path:
    from bench import workloads

    if dry:
        name = "tiny"
    else:
        build_shape(shape, workdir)
        name = shape
    wdir = workdir / f"{name}-{quantization}"
    if not (wdir / "workload.json").exists():
        workloads.prepare(name, wdir, n_prompts=n_prompts, quantization=quantization)
    return wdir


def section_ppo(key: str, spec: dict[str, Any], shape: str, layouts: list[tuple[str, str]], budget: float) -> dict:
    dry, workdir = spec["dry_run"], Path(spec["workdir"])
    s = spec["settings"]["ppo_1b" if key == "c_ppo_1b" else "ppo_8b"]
    deadline = time.perf_counter() + budget
    result: dict[str, Any] = {}
    for layout, quantization in layouts:
        q = "none" if dry else quantization
        name = f"{layout}_{'bf16' if q == 'none' and not dry else q if not dry else 'fp32'}"
        try:
            wdir = prepare_ppo(shape, workdir, dry, q, s["batch_size"])
            ppo = {**s, "updates": s.get("four_updates", 1) if layout == "four" else s["updates"]}
            child_spec = {**spec, "ppo": ppo, "layout": layout, "quantization": q, "workload_dir": str(wdir)}
            result[name] = run_section_child("ppo", child_spec, max(10.0, deadline - time.perf_counter()))
        except Exception as e:  # noqa: BLE001 - recorded, the next layout still runs
            result[name] = {"error": _error_text(e)}
    if dry:
        result["note"] = "dry run: the tests' 2-layer model, fp32 on the CPU, quantization none for every layout"
    shared = next((v for k, v in result.items() if k.startswith("shared") and isinstance(v, dict) and "error" not in v), None)
    four = next((v for k, v in result.items() if k.startswith("four") and isinstance(v, dict) and "error" not in v), None)
    mem = "peak_gpu_mb" if not dry else "peak_cpu_rss_mb"
    if shared and four and shared.get(mem) and four.get(mem):
        result["shared_vs_four_memory"] = shared[mem] / four[mem]
    if key == "e_ppo_8b":
        result["fits"] = bool(shared)
    return result


# ------------------------------------------------------------------ d: TRL 1.12 against ours

def trl_peer_python(workdir: Path) -> tuple[str | None, str]:
    """A python that imports TRL 1.12 (`trl.experimental.ppo`), or None and why not.

    GPU_CHECK_TRL_DIR: a folder TRL 1.12 was installed into with `pip install --no-deps --target`
    (bench/gpu_check.sh); it goes first on the peer's path through a small wrapper."""
    import subprocess

    candidates = []
    if common.PEER_PYTHON.exists():
        candidates.append((str(common.PEER_PYTHON), {}))
    trl_dir = os.environ.get("GPU_CHECK_TRL_DIR")
    if trl_dir:
        candidates.append((sys.executable, {"PYTHONPATH": f"{trl_dir}{os.pathsep}{common.ROOT}"}))
    candidates.append((sys.executable, {}))
    reasons = []
    for python, env in candidates:
        probe = subprocess.run([python, "-c", "import trl, trl.experimental.ppo; print(trl.__version__)"],
                               capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
        version = probe.stdout.strip().splitlines()[-1] if probe.returncode == 0 and probe.stdout.strip() else None
        if version and version.startswith("1.12"):
            if not env:
                return python, version
            wrapper = workdir / "trl112-python"
            wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={env['PYTHONPATH']}${{PYTHONPATH:+:$PYTHONPATH}} "
                               f"exec {sys.executable} \"$@\"\n")
            wrapper.chmod(0o755)
            return str(wrapper), version
        reasons.append(f"{python}{' with ' + trl_dir if env else ''}: "
                       f"{version or (probe.stderr.strip().splitlines() or ['no output'])[-1]}")
    return None, "TRL 1.12 not importable (" + "; ".join(reasons) + ")"


def section_trl(spec: dict[str, Any], budget: float) -> dict[str, Any]:
    from bench import ppo_vs_trl

    dry, workdir = spec["dry_run"], Path(spec["workdir"])
    python, why = trl_peer_python(workdir)
    if python is None:
        return {"skipped": why}
    common.PEER_PYTHON = Path(python)  # run_workload starts the peer with this
    name = "tiny" if dry else "smollm2"
    contenders = ppo_vs_trl.CONTENDERS
    if dry:  # the same code path, 2 updates; ours' variants are flags of ours' own child
        ppo_vs_trl.SETTINGS[name] = {**ppo_vs_trl.SETTINGS[name], "updates": 2, "warmup": 1, "ppo_epochs": 1}
        contenders = ("ours", "peer", "peer_nogc")
    line, detail = ppo_vs_trl.run_workload(name, spec["settings"]["trl"]["runs"], workdir / "trl", contenders)
    return {"trl_version": why, "workload": name, **{k: line[k] for k in (*contenders, "ratios")}}


# ------------------------------------------------------------------ the sections, each in its own process

CHILDREN = {"sft": child_sft, "reward": child_reward, "ppo": child_ppo}


def run_section_child(kind: str, spec: dict[str, Any], budget: float) -> dict[str, Any]:
    spec_path = Path(spec["workdir"]) / f"spec-{kind}-{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps({**spec, "kind": kind}))
    try:
        result = common.run_child([sys.executable, "-m", "bench.gpu_check", "--child", str(spec_path)],
                                  timeout=budget, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    except RuntimeError as e:
        if "code -9" in str(e):
            raise RuntimeError(f"over its time budget of {budget:.0f} s (killed)\n{e}") from None
        raise
    result.pop("process_wall_s", None)
    result["process_peak_rss_mb"] = result.pop("peak_rss_mb")
    return result


def run_section(key: str, spec: dict[str, Any]) -> dict[str, Any]:
    budget = DRY_BUDGET_S if spec["dry_run"] else BUDGET_S[key]
    start = time.perf_counter()
    try:
        if key == "a_sft":
            result = run_section_child("sft", spec, budget)
        elif key == "b_reward":
            result = run_section_child("reward", spec, budget)
        elif key == "c_ppo_1b":
            result = section_ppo(key, spec, "llama_1b_shape", [("shared", "nf4"), ("four", "none")], budget)
        elif key == "d_ppo_vs_trl":
            result = section_trl(spec, budget)
        else:
            result = section_ppo(key, spec, "llama_8b_shape", [("shared", "nf4")], budget)
    except Exception as e:  # noqa: BLE001 - recorded, the other sections still run
        result = {"error": _error_text(e)}
    result["section_wall_s"] = round(time.perf_counter() - start, 2)
    result["budget_s"] = budget
    return result


def _error_text(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text[-4000:] if len(text) > 4000 else text


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-").lower()
    return "cpu"


def table(results: dict[str, Any]) -> str:
    """The figures as one row per measurement."""
    rows = [("section", "what", "s/step or update", "tokens/s", "MFU", "peak MB", "note")]

    def mem(r):
        return r.get("peak_gpu_mb", r.get("peak_cpu_rss_mb", ""))

    def fmt(x, digits=3):
        return "" if x in (None, "") else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))

    for key in (k for k in SECTIONS if k in results):
        r = results[key]
        if "error" in r or "skipped" in r:
            rows.append((key, "", "", "", "", "", ("ERROR " if "error" in r else "skipped: ") +
                         (r.get("error") or r.get("skipped")).splitlines()[0][:90]))
            continue
        if key == "a_sft":
            for mode in ("qlora", "lora"):
                m = r.get(mode, {})
                rows.append((key, f"{mode} ({m.get('quantization')})", fmt(m.get("step_s")), fmt(m.get("tokens_per_s")),
                             fmt(m.get("mfu")), fmt(mem(m)), ""))
        elif key == "b_reward":
            rows.append((key, f"reward ({r.get('quantization')})", fmt(r.get("step_s")), fmt(r.get("tokens_per_s")),
                         fmt(r.get("mfu")), fmt(mem(r)), ""))
        elif key == "d_ppo_vs_trl":
            for c in ("ours", "peer", "peer_nogc"):
                m = r.get(c, {})
                rows.append((key, c, fmt(m.get("sec_per_update")), fmt(m.get("tokens_per_s")), "",
                             fmt(m.get("peak_rss_mb")), "peak = process RSS"))
        else:
            for name, m in r.items():
                if not isinstance(m, dict):
                    continue
                if "error" in m:
                    rows.append((key, name, "", "", "", "", "ERROR " + m["error"].splitlines()[0][:90]))
                    continue
                phases = "/".join(fmt(m.get(p), 2) for p in ("generation_s", "forward_s", "scoring_s", "training_s"))
                rows.append((key, name, fmt(m.get("sec_per_update")), "", "", fmt(mem(m)), f"gen/fwd/score/train {phases}"))
            if "fits" in r:
                rows.append((key, "fits one GPU", "", "", "", "", str(r["fits"])))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="CPU, fp32, tiny shapes, one step each (seconds)")
    parser.add_argument("--out", default=str(common.RESULTS), help="folder for gpu-<device>.json")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="a subset, e.g. a_sft,c_ppo_1b")
    parser.add_argument("--workdir", help="where models and workloads go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        common.report(CHILDREN[spec["kind"]](spec))
        return
    started = time.perf_counter()
    machine = common.machine()
    device = device_name()
    if not args.dry_run and device == "cpu":
        sys.exit("no GPU: run with --dry-run on the CPU")
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="align-gpu-check-")
        workdir = Path(tmp)
    spec = {"dry_run": args.dry_run, "workdir": str(workdir), "settings": DRY if args.dry_run else REAL}
    results: dict[str, Any] = {}
    source_error = None
    if not args.dry_run:
        try:
            ensure_source_weights()
        except Exception as e:  # noqa: BLE001 - the sections then fail and say so
            source_error = _error_text(e)
    try:
        for key in args.sections.split(","):
            results[key] = run_section(key, spec)
            print(f"# {key}: {results[key]['section_wall_s']} s"
                  + (" ERROR" if "error" in results[key] else " skipped" if "skipped" in results[key] else ""),
                  file=sys.stderr, flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    import torch

    body = {
        "benchmark": "gpu_check",
        "machine": {**machine, "load_average_at_end": list(os.getloadavg()),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "device": device,
        "dry_run": args.dry_run,
        "versions": common.versions("torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes"),
        "peak_flops": PEAK_FLOPS,
        "flops_note": "training FLOPs = 6 x base parameters x tokens, forward-only 2 x; MFU = FLOP/s / peak_flops",
        "settings": spec["settings"],
        "budgets_s": {k: DRY_BUDGET_S if args.dry_run else BUDGET_S[k] for k in SECTIONS},
        "quantization_note": ("dry run: quantization none everywhere (bitsandbytes 4-bit on the CPU is slow)"
                              if args.dry_run else "nf4 = bitsandbytes NF4 with double quantisation, bf16 compute"),
        "source_model_error": source_error,
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu-{device}.json"
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    print(table(results))
    print(f"# {path} ({body['wall_s']} s)")


if __name__ == "__main__":
    main()
