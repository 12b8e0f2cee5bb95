"""`align demo`: the pipeline so far on the embedded SmolLM2-135M-Instruct and the shipped demo
data (SFT -> reward model -> PPO), then the SFT and aligned adapters loaded back with peft alone,
answering held-out prompts under the demo's gold judge."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from align.core.config import load_config
from align.core.records import load_records
from align.demo.tasks import judge

ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "data" / "demo"
CONFIGS = ROOT / "configs"


def run_demo(out_dir: Path, n_samples: int = 16) -> None:
    from align.ppo.config import PPOConfig
    from align.ppo.train import train as train_ppo
    from reward.config import RewardConfig
    from reward.train import train as train_reward
    from sft.config import SFTConfig
    from sft.train import train as train_sft

    out_dir = out_dir.resolve()
    sft_dir, reward_dir, ppo_dir = out_dir / "sft", out_dir / "reward", out_dir / "ppo"
    stages = [
        ("stage 1: QLoRA SFT", train_sft, SFTConfig, "sft", [f"out_dir={sft_dir}", f"data.train={DEMO_DATA / 'sft.jsonl'}"]),
        ("stage 2: reward model", train_reward, RewardConfig, "reward",
         [f"out_dir={reward_dir}", f"data.train={DEMO_DATA / 'rankings.jsonl'}", f"model.adapter={sft_dir / 'adapter'}"]),
        ("stage 3: PPO", train_ppo, PPOConfig, "ppo",
         [f"out_dir={ppo_dir}", f"model.adapter={sft_dir / 'adapter'}", f"reward.model={reward_dir}",
          f"data.prompts={DEMO_DATA / 'prompts.jsonl'}", f"data.eval_prompts={DEMO_DATA / 'heldout.jsonl'}"]),
    ]
    times = {}
    for title, train, cls, stage, overrides in stages:
        config = load_config(cls, CONFIGS / stage / "smollm2-demo.yaml", overrides)
        click.echo(f"[demo] {title} -> {config.out_dir}")
        started = time.time()
        figures = train(config, overwrite=True)
        times[stage] = time.time() - started
        click.echo(f"[demo] {title} done in {times[stage]:.0f} s: {headline(stage, figures)}")

    rows = {name: sample_adapter(path / "adapter", n_samples) for name, path in (("sft", sft_dir), ("aligned", ppo_dir))}
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        for sft_row, aligned_row in zip(rows["sft"], rows["aligned"]):
            f.write(json.dumps({"prompt": sft_row["prompt"], "sft": sft_row["response"], "sft_judge": sft_row["judge"],
                                "aligned": aligned_row["response"], "aligned_judge": aligned_row["judge"]}) + "\n")
    for name, samples in rows.items():
        score = sum(s["judge"] for s in samples) / len(samples)
        words = sum(len(s["response"].split()) for s in samples) / len(samples)
        click.echo(f"[demo] {name:8s} adapter (loaded with peft alone): gold judge {score:.2f}, "
                   f"{words:.1f} words per answer on {len(samples)} held-out prompts")
    click.echo("[demo] stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    click.echo(f"[demo] results: {out_dir} (each stage's metrics.json; samples.jsonl compares SFT and aligned)")


def headline(stage: str, figures: dict) -> str:
    keys = {"sft": ("eval/loss_before", "eval/loss"), "reward": ("eval_before/accuracy", "eval/accuracy"),
            "ppo": ("eval_before/reward_mean", "eval/reward_mean")}[stage]
    return f"{keys[0]} {figures.get(keys[0], float('nan')):.3f} -> {keys[1]} {figures.get(keys[1], float('nan')):.3f}"


def sample_adapter(adapter: Path, n: int) -> list[dict]:
    """Load an adapter with peft alone (as a user would) and answer held-out demo prompts greedily."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    samples = []
    for record in load_records(DEMO_DATA / "heldout.jsonl", "prompts")[:n]:
        inputs = tokenizer.apply_chat_template(list(record.messages), add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        prompt = record.messages[-1]["content"]
        samples.append({"prompt": prompt, "response": answer, "judge": judge(prompt, answer)})
    return samples
