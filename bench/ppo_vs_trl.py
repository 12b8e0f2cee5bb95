"""Our PPO against TRL 1.12.0's PPOTrainer on the identical workload (issue #8).

    .venv/bin/python -m bench.ppo_vs_trl [--runs N] [--workloads tiny,smollm2]

Per workload, five contenders, each run in a fresh process of its own and interleaved run by run
(the machine is shared, so timings are noisy):

    ours       align.ppo.train.PPOTrainer.run: one base, policy + value adapters, reference = the
               base with adapters off, reward = the same head on the base; sampling on the working copy
               of the weights (generation.working_copy, the default since 2026-12-06)
    ours_fp32  ours with the backward pass's input gradients in fp32 (training.backward_precision=fp32):
               TRL's precision throughout; ours takes them in bf16 on a CPU with AMX (core/fused_lora.py)
    ours_adapters  the same sampling through the unmerged adapter (generation.working_copy=false): ours
               before the working copy, in the same interleaving
    peer       TRL 1.12.0 as shipped (bench/trl_peer.py): the policy with a LoRA peft_config (reference
               = adapter disabled), a value model trained in full and a separate reward model
    peer_nogc  the same with gc.collect made a no-op in its process (TRL calls it twice an update)

Both get the same base weights, tokenizer, 8 prompts (one batch: every update rolls out the same
queries), reward head, LoRA rank, learning rate, sampling and PPO settings; see SETTINGS. A run is
`warmup + timed` updates; per run the median over its timed updates, then the median over runs.
Besides wall seconds, the CPU seconds of the process per update (one compute thread: the work done,
which other jobs on the machine change far less than they change wall time).
The toy task's reward curve (objective/scores per update, mean over runs) is kept for both.
Each contender's figures come with their spread: the lowest and highest of the runs' medians.

Floors (issue #24, bench/floors.py): this machine's fp32 GEMM rate on the model's shapes and its copy
bandwidth are measured once per workload, before the runs. Each phase's FLOPs are the work the algorithm
needs on the workload's real tokens (the prompts' own lengths, the update's mean response length):
generation the prefill and one token a row a step; forward the reference's and the value's passes over
prompt + response; scoring one more pass (ours reads the reward off the reference pass, so it spends
none); training, for each PPO epoch, the policy's and the value's pass forward and back (2x forward: the
base is frozen, so the backward pass computes input gradients, and LoRA's small ones). A phase's achieved
GFLOP/s is those FLOPs over its median seconds, and `share` its ratio to the GEMM rate; generation also
gets its bandwidth floor (every step reads every weight) and `x_floor`, its seconds over the larger floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, floors

# one intra-op thread per run: on the shared 2-core machine, two OpenMP threads contending with other
# jobs made the same update swing tenfold
THREADS = 1
# identical for both trainers. A run is `updates` updates; the first `warmup` are not timed. SmolLM2 runs
# one timed update after a warm-up pass (one no-grad forward of every model the process holds, on the
# batch: weights paged in, allocator grown), and 3 runs per contender to tiny's 5 (issue #24: medians of at
# least 3), which keeps `make bench` within its time budget (a SmolLM2 run is 20-50 s, a tiny one 7-25 s).
# Tiny's ratio to the peer without gc swung from 0.68x to 0.99x between three runs of one `make bench`
# (2026-12-02): 5 runs steady its median.
SETTINGS = {
    "tiny": {"batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 4, "max_new_tokens": 24, "temperature": 0.7,
             "learning_rate": 1e-3, "adam_eps": 1e-5, "kl_coef": 0.05, "lora_r": 8, "lora_alpha": 16,
             "warmup": 2, "updates": 16, "warmup_pass": False, "runs": 5},
    "smollm2": {"batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 24, "temperature": 0.7,
                "learning_rate": 1e-4, "adam_eps": 1e-5, "kl_coef": 0.05, "lora_r": 16, "lora_alpha": 32,
                "warmup": 0, "updates": 1, "warmup_pass": True, "runs": 3},
}
PHASES = ["sec_per_update", "cpu_s_per_update", "generation_s", "forward_s", "scoring_s", "training_s", "gc_s", "other_s",
          "tokens_per_s", "response_length"]
CONTENDERS = ("ours", "ours_fp32", "ours_adapters", "peer", "peer_nogc")
OURS_VARIANTS = {"ours": [], "ours_fp32": ["training.backward_precision=fp32"],
                 "ours_adapters": ["generation.working_copy=false"]}


def our_config(paths: dict[str, Any], s: dict[str, Any], out_dir: Path | str, *extra: str) -> Any:
    """Our trainer's PPOConfig for a workload (paths as workloads.prepare gives them) under SETTINGS s;
    `extra` overrides come last and win."""
    from align.core.config import load_config
    from align.ppo.config import PPOConfig

    return load_config(PPOConfig, None, [
        f"out_dir={out_dir}", f"model.name={paths['model_path']}", "model.quantization=none",
        f"model.lora.r={s['lora_r']}", f"model.lora.alpha={s['lora_alpha']}", "model.lora.dropout=0.0",
        f"reward.model={paths['reward_dir']}", "reward.no_eos_penalty=null",
        f"data.prompts={paths['prompts']}", "data.eval_prompts=null",
        f"training.batch_size={s['batch_size']}", f"training.mini_batch_size={s['mini_batch_size']}",
        f"training.ppo_epochs={s['ppo_epochs']}", f"training.learning_rate={s['learning_rate']}",
        f"generation.max_new_tokens={s['max_new_tokens']}", "tracking.wandb=false", *extra,
    ])


def ours_child(spec_path: str) -> None:
    """One run of our trainer; the time of an update is the time between its metrics.log calls."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    from align.core import rundir
    from align.core.records import load_records
    from align.ppo.train import PPOTrainer

    s = spec["settings"]
    out_dir = Path(spec["workdir"]) / f"ours-{spec['seed']}"
    config = our_config(spec, s, out_dir,
                        f"training.updates={s['updates']}", f"training.adam_eps={s['adam_eps']}", f"training.kl_coef={s['kl_coef']}",
                        "training.lr_scheduler=linear", f"training.seed={spec['seed']}", f"generation.temperature={s['temperature']}",
                        "training.eval_steps=0", "training.sample_steps=0", f"training.save_steps={s['updates']}",
                        *spec["extra"])
    load_start = time.perf_counter()
    out = rundir.StageDir(config.out_dir)
    out.prepare(overwrite=True, resume=False)
    trainer = PPOTrainer(config, out)
    load_s = time.perf_counter() - load_start
    updates: list[dict[str, float]] = []
    real_log, last, last_cpu = trainer.metrics.log, [0.0], [0.0]

    def log(step, stats):
        now, cpu = time.perf_counter(), time.process_time()
        if "objective/scores" in stats:
            updates.append({
                "sec_per_update": now - last[0], "cpu_s_per_update": cpu - last_cpu[0],
                "generation_s": stats["time/generation_s"], "forward_s": stats["time/forward_s"],
                "scoring_s": stats["time/scoring_s"], "training_s": stats["time/training_s"],
                "response_tokens": stats["objective/response_length"] * s["batch_size"],
                "scores": stats["objective/scores"], "kl": stats["objective/kl"], "ratio": stats["val/ratio"],
            })
            last[0], last_cpu[0] = now, cpu
        return real_log(step, stats)

    trainer.metrics.log = log
    prompts = load_records(config.data.prompts, "prompts")
    if s["warmup_pass"]:
        ids, mask = trainer._encode_prompts(prompts[: s["batch_size"]])
        with torch.no_grad():  # the one base every pass reads
            trainer.stack.policy_logits(ids, mask, 1)
    train_start = last[0] = time.perf_counter()
    last_cpu[0] = time.process_time()
    trainer.run(prompts, [], resume=False)
    import importlib.metadata as md

    common.report({"updates": updates, "load_s": load_s, "train_s": time.perf_counter() - train_start,
                   "versions": {n: md.version(n) for n in ("torch", "transformers", "peft")},
                   "trainable_params": sum(p.numel() for p in trainer.stack.trainable_parameters())})


def rates_child(model_dir: str) -> None:
    """This machine's fp32 GEMM rate on the model's shapes and its copy bandwidth, with the runs' threads."""
    import torch

    from align.core.memory import model_shape

    torch.set_num_threads(THREADS)
    shape = model_shape(model_dir)
    common.report(floors.machine_rates(shape))


def summarise_run(run: dict[str, Any], warmup: int) -> dict[str, float]:
    """One run's figures: the median over its timed updates (the warm-up updates dropped)."""
    timed = run["updates"][warmup:]
    for u in timed:
        u.setdefault("gc_s", 0.0)
        u["other_s"] = u["sec_per_update"] - sum(u.get(k, 0.0) for k in
                                                   ("generation_s", "forward_s", "scoring_s", "training_s", "gc_s"))
        u["tokens_per_s"] = u["response_tokens"] / u["sec_per_update"]
        u["response_length"] = u["response_tokens"] / run["batch_size"]
    out = {k: common.median([u[k] for u in timed]) for k in PHASES}
    out["peak_rss_mb"] = run["peak_rss_mb"]
    return out


def phase_floors(shape: Any, s: dict[str, Any], query_tokens: list[int], figures: dict[str, float],
                 rates: dict[str, float], reward_off_reference: bool) -> dict[str, dict[str, float]]:
    """Each phase's FLOPs on the workload's real tokens, its achieved GFLOP/s and share of the GEMM rate;
    generation's floors and x_floor (see the module's docstring). reward_off_reference: the contender reads
    the reward off the reference pass (ours), so scoring needs no FLOPs of its own."""
    steps = max(1, round(figures["response_length"]))
    prompts = query_tokens[:s["batch_size"]]
    one_pass = sum(floors.forward_flops(shape, q + steps, logits=0, lora_r=s["lora_r"]) for q in prompts)
    with_logits = sum(floors.forward_flops(shape, q + steps, logits=steps, lora_r=s["lora_r"]) for q in prompts)
    work = {"forward": with_logits + one_pass,  # π_ref (its logits on the response) and V
            "scoring": 0 if reward_off_reference else one_pass,
            "training": s["ppo_epochs"] * 2 * (with_logits + one_pass)}  # π and V, forward and back (2x)
    out = {"generation": {"seconds": round(figures["generation_s"], 3),
                          **floors.sampling_report(shape, prompts, steps, s["lora_r"], figures["generation_s"], rates)}}
    for phase, flops in work.items():
        seconds = figures[f"{phase}_s"]
        out[phase] = {"seconds": round(seconds, 3), **floors.achieved(flops, seconds, rates)}
    return out


def run_workload(name: str, runs: int, workdir: Path, contenders: tuple[str, ...] = CONTENDERS) -> dict[str, Any]:
    from align.core.memory import model_shape
    from bench import workloads

    paths = workloads.prepare(name, workdir / name)
    settings = SETTINGS[name]
    shape = model_shape(paths["model_path"])
    # in a child of its own: a parent that imported torch would pass its resident memory on to every run's
    # peak (a forked child's ru_maxrss starts from its parent's)
    rates = common.run_child([sys.executable, "-m", "bench.ppo_vs_trl", "--rates", paths["model_path"]],
                             env={"OMP_NUM_THREADS": str(THREADS)})
    rates = {k: rates[k] for k in ("gemm_gflops", "copy_gbps")}
    per_run: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for i in range(runs):
        # rotate the order so no contender always runs first (or right after the heaviest one)
        order = contenders[i % len(contenders):] + contenders[:i % len(contenders)]
        for contender in order:
            spec = {**paths, "workdir": str(workdir / name), "settings": settings, "seed": i, "threads": THREADS,
                    "extra": OURS_VARIANTS.get(contender, [])}
            spec_path = workdir / name / f"spec-{contender}-{i}.json"
            spec_path.write_text(json.dumps(spec))
            if contender in OURS_VARIANTS:
                argv = [sys.executable, "-m", "bench.ppo_vs_trl", "--child", str(spec_path)]
            else:
                argv = [str(common.PEER_PYTHON), "-m", "bench.trl_peer", str(spec_path),
                        "shipped" if contender == "peer" else "nogc"]
            env = {"OMP_NUM_THREADS": str(THREADS)}
            # ours as the `align` command runs it (core.malloc); TRL on the system's malloc, as its users run it
            result = common.run_child(argv, env=common.as_align_runs(env) if contender in OURS_VARIANTS else env)
            result["batch_size"] = settings["batch_size"]
            per_run[contender].append(result)
            print(f"# {name} run {i} {contender}: {result['process_wall_s']} s, "
                  f"{summarise_run(result, settings['warmup'])['sec_per_update']:.3f} s/update", file=sys.stderr)
    line: dict[str, Any] = {"workload": name}
    for contender in contenders:
        summaries = [summarise_run(r, settings["warmup"]) for r in per_run[contender]]
        line[contender] = {k: round(common.median([s[k] for s in summaries]), 4) for k in [*PHASES, "peak_rss_mb"]}
        line[contender]["spread"] = {k: [round(min(s[k] for s in summaries), 4), round(max(s[k] for s in summaries), 4)]
                                     for k in ("sec_per_update", "generation_s", "training_s", "peak_rss_mb")}
        line[contender]["floors"] = phase_floors(shape, settings, paths["query_tokens"], line[contender], rates,
                                                 reward_off_reference=contender in OURS_VARIANTS)
    ours, peer, nogc = line["ours"], line["peer"], line["peer_nogc"]
    line["ratios"] = {
        "time_vs_peer": round(ours["sec_per_update"] / peer["sec_per_update"], 3),
        "time_vs_peer_nogc": round(ours["sec_per_update"] / nogc["sec_per_update"], 3),
        "mem_vs_peer": round(ours["peak_rss_mb"] / peer["peak_rss_mb"], 3),
        # CPU seconds barely move when other jobs take the cores, wall seconds do
        "cpu_time_vs_peer": round(ours["cpu_s_per_update"] / peer["cpu_s_per_update"], 3),
        "cpu_time_vs_peer_nogc": round(ours["cpu_s_per_update"] / nogc["cpu_s_per_update"], 3),
    }
    if "ours_fp32" in line:
        line["ratios"]["time_vs_ours_fp32"] = round(ours["sec_per_update"] / line["ours_fp32"]["sec_per_update"], 3)
        line["ratios"]["ours_fp32_vs_peer"] = round(line["ours_fp32"]["sec_per_update"] / peer["sec_per_update"], 3)
    if "ours_adapters" in line:
        adapters = line["ours_adapters"]
        line["ratios"]["time_vs_ours_adapters"] = round(ours["sec_per_update"] / adapters["sec_per_update"], 3)
        line["ratios"]["generation_vs_ours_adapters"] = round(ours["generation_s"] / adapters["generation_s"], 3)
    # objective/scores per update, the mean over runs; and its mean over the first and second half
    curves = {c: [sum(r["updates"][u]["scores"] for r in per_run[c]) / runs for u in range(settings["updates"])]
              for c in contenders}
    line["reward_curve"] = {c: [round(x, 4) for x in curve] for c, curve in curves.items()}
    half = max(1, settings["updates"] // 2)
    line["reward_mean"] = {c: {"all": round(sum(curve) / len(curve), 4),
                               "first_half": round(sum(curve[:half]) / len(curve[:half]), 4),
                               "second_half": round(sum(curve[half:] or curve) / len(curve[half:] or curve), 4)}
                           for c, curve in curves.items()}
    line["machine_rates"] = rates
    detail = {"settings": settings, "query_tokens": paths["query_tokens"], "model_path": paths["model_path"],
              "runs": {c: [{k: v for k, v in r.items() if k != "batch_size"} for r in per_run[c]] for c in contenders}}
    return line, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rates", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, help="runs per contender (default: the workload's, 5 tiny, 3 SmolLM2)")
    parser.add_argument("--workloads", default="tiny,smollm2")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="a subset of the five (ours, peer and peer_nogc always run: the ratios need them)")
    args = parser.parse_args()
    if args.child:
        return ours_child(args.child)
    if args.rates:
        return rates_child(args.rates)
    if not common.PEER_PYTHON.exists():
        sys.exit(f"{common.PEER_PYTHON} missing: run `make bench` (it sets up the peer venv) first")
    machine = common.machine()
    lines, details = [], {}
    with tempfile.TemporaryDirectory(prefix="align-bench-") as tmp:
        for name in args.workloads.split(","):
            contenders = tuple(c for c in CONTENDERS
                               if c in args.contenders.split(",") or c in ("ours", "peer", "peer_nogc"))
            line, detail = run_workload(name, args.runs or SETTINGS[name]["runs"], Path(tmp), contenders)
            common.emit(line)
            lines.append(line)
            details[name] = detail
    peer_versions = details[lines[0]["workload"]]["runs"]["peer"][0]["versions"]
    common.save("ppo_vs_trl", {
        "machine": machine,
        "versions": {"ours": common.versions("torch", "transformers", "peft", "trl"), "peer": peer_versions},
        "note": "2-core machine shared with other engineers' jobs: contenders interleaved run by run, medians "
                "over timed updates within a run and then over runs; peak RSS is each run's own process (wait4).",
        "results": lines,
        "details": details,
    })


if __name__ == "__main__":
    main()
