"""`align demo`: stage 1 on the embedded SmolLM2-135M-Instruct and the shipped demo data,
then the adapter loaded back with peft alone, answering held-out prompts under the gold judge."""

from __future__ import annotations

import json
from pathlib import Path

import click

from align.core.config import load_config
from align.core.records import load_records
from align.demo.tasks import judge

ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "data" / "demo"
SFT_CONFIG = ROOT / "configs" / "sft" / "smollm2-demo.yaml"


def run_demo(out_dir: Path, n_samples: int = 8) -> None:
    from sft.config import SFTConfig
    from sft.train import train

    config = load_config(SFTConfig, SFT_CONFIG, [f"out_dir={out_dir / 'sft'}", f"data.train={DEMO_DATA / 'sft.jsonl'}"])
    click.echo(f"[demo] stage 1: QLoRA SFT of {config.model.name} -> {config.out_dir}")
    figures = train(config, overwrite=True)
    click.echo(f"[demo] eval loss {figures['eval/loss_before']:.3f} -> {figures['eval/loss']:.3f} "
               f"in {figures['train/runtime_s']:.0f} s")
    samples = sample_adapter(Path(config.out_dir) / "adapter", n_samples)
    path = Path(config.out_dir) / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    score = sum(s["judge"] for s in samples) / len(samples)
    click.echo(f"[demo] adapter reloaded with peft alone; mean judge score on {len(samples)} held-out prompts: {score:.2f}")
    click.echo(f"[demo] results: {Path(config.out_dir).resolve()} (metrics.json, samples.jsonl, adapter/)")


def sample_adapter(adapter: Path, n: int) -> list[dict]:
    """Load the adapter with peft alone (as a user would) and answer held-out demo prompts greedily."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    samples = []
    for record in load_records(DEMO_DATA / "heldout.jsonl", "prompts")[:n]:
        inputs = tokenizer.apply_chat_template(
            list(record.messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
        answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        prompt = record.messages[-1]["content"]
        samples.append({"prompt": prompt, "response": answer, "judge": judge(prompt, answer)})
    return samples
