"""Rollout throughput: our PPO trainer's sampling settings against plain `model.generate` (issue #5).

    .venv/bin/python -m bench.generation [--batch-sizes 1,2,4,8,16,32] [--repeats 2] [--one-repeat-from 16]

SmolLM2-135M (fp32) with the policy's LoRA adapter enabled, as PPO samples from it. 24 new tokens at
temperature 0.7 from the demo prompts in the chat template. Per batch size, interleaved repeat by
repeat, the median of (2 repeats up to batch 8, one from 16, so `make bench` stays within 20 minutes):

    ours        what make_rollout does (core/decoding.py, since 2026-12-06 evening): the prompts' shared prefix
                run once and their own tokens in one packed row, then our decode loop (inverse-CDF draws, a KV
                cache with room for the answer, log π_old kept), stopping once every sequence has ended, the
                tail after the first EOS padded out (truncate_at_eos), under torch.inference_mode, on the
                working copy of the weights (generation.working_copy, core/sampling_weights.py: the adapter
                merged in, packed for the batch's rows), its building timed in
    generate    ours before the decode loop: transformers' generate on the same working copy, left-padded
                prompts, every EOS id of the model
    adapters    ours before 2026-12-06: transformers' generate through the unmerged adapter
    defaults    model.generate(**tokenizer(prompts, padding=True), max_new_tokens=24, do_sample=True):
                the tokenizer's own padding side (right) and the model's generation config, nothing else
    no_cache    adapters with use_cache=False (every step recomputes the whole sequence): an ablation,
                batch sizes up to 2, one repeat

tokens/s counts real response tokens (up to and including the first EOS) over wall time. Right
padding puts pad tokens between a short prompt and its answer, so `defaults` also reports how many
of its answers differ from what the same prompt gives alone (left-padded), as a share.

Floors (bench/floors.py, issue #24): this machine's fp32 GEMM rate on the model's shapes and its copy
bandwidth are measured once; per batch size, ours' sampling FLOPs (every real prompt token prefilled, the
steps it took: ours runs the shared prefix once, so part of its lead on this floor is work it does not do)
give its achieved GFLOP/s and the FLOP floor, the weights read every step (and the KV cache) the
bandwidth floor, and `x_floor` is ours' seconds over the larger of the two.

Layouts (`layouts`): one product of `rows` x in by each weight shape of the model, the weights read from
memory (enough distinct copies to outgrow the caches, as a sampling step reads them), `F.linear` on the
weight as stored against oneDNN's packed layout the working copy uses: microseconds and GB/s of weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench import common, floors

MAX_NEW_TOKENS = 24
TEMPERATURE = 0.7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one-repeat-from", type=int, default=16,
                        help="smallest batch size timed once: 16-32 sequences already average over many samples")
    parser.add_argument("--no-cache-up-to", type=int, default=2, help="largest batch size timed without the KV cache")
    parser.add_argument("--no-cache-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import json

    import torch

    torch.set_num_threads(args.threads)
    from align.core import modeling
    from align.core.memory import model_shape
    from align.core.sampling_weights import sampling_weights
    from align.ppo.models import POLICY, PolicyStack
    from align.ppo.rollout import truncate_at_eos
    from bench.workloads import DEMO

    machine = common.machine()
    config = modeling.ModelConfig(name="smollm2-135m-instruct", quantization="none")
    tokenizer = modeling.load_tokenizer(modeling.resolve_model_path(config.name))
    stack = PolicyStack(config, tokenizer, None)
    stack.peft.eval()
    eos_ids = sorted({tokenizer.eos_token_id} | set(
        stack.peft.generation_config.eos_token_id if isinstance(stack.peft.generation_config.eos_token_id, list)
        else [stack.peft.generation_config.eos_token_id]))
    prompts = [json.loads(line)["prompt"] for line in (DEMO / "prompts.jsonl").read_text().splitlines()]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]

    def encode(batch: list[str], side: str) -> dict[str, torch.Tensor]:
        tokenizer.padding_side = side
        return tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)

    work: dict[int, list[tuple[list[int], int]]] = {}

    def ours(batch: list[str]) -> tuple[torch.Tensor, int]:
        enc = encode(batch, "left")
        out = stack.sample(enc["input_ids"], enc["attention_mask"], temperature=TEMPERATURE, top_p=1.0,
                           max_new_tokens=MAX_NEW_TOKENS, pad_id=tokenizer.pad_token_id, eos_ids=eos_ids, working_copy=True)
        responses, mask, _ = truncate_at_eos(out.tokens, eos_ids, tokenizer.pad_token_id)
        # the floors' work: the real prompt tokens, and the steps sampling took
        work.setdefault(len(batch), []).append((enc["attention_mask"].sum(1).tolist(), out.tokens.shape[1]))
        return responses, int(mask.sum())

    def generate(batch: list[str], use_cache: bool = True, working_copy: bool = True) -> tuple[torch.Tensor, int]:
        enc = encode(batch, "left")
        stack.use(POLICY)
        with torch.inference_mode(), sampling_weights(stack.peft, len(batch), enabled=working_copy):
            out = stack.peft.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=True,
                                      temperature=TEMPERATURE, top_p=1.0, top_k=0, max_new_tokens=MAX_NEW_TOKENS,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, use_cache=use_cache)
        responses, mask, _ = truncate_at_eos(out[:, enc["input_ids"].shape[1]:], eos_ids, tokenizer.pad_token_id)
        return responses, int(mask.sum())

    def defaults(batch: list[str]) -> tuple[torch.Tensor, int]:
        enc = encode(batch, "right")
        out = stack.peft.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=True)
        responses, mask, _ = truncate_at_eos(out[:, enc["input_ids"].shape[1]:], eos_ids, tokenizer.pad_token_id)
        return responses, int(mask.sum())

    variants = {"ours": ours, "generate": generate, "adapters": lambda b: generate(b, working_copy=False),
                "defaults": defaults, "no_cache": lambda b: generate(b, use_cache=False, working_copy=False)}
    ours(texts[:1])  # warm-up: first-call allocations and lazy initialisation
    work.clear()
    raw: dict[str, dict[int, list[dict[str, float]]]] = {v: {} for v in variants}
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    for batch_size in sizes:
        batch = texts[:batch_size]
        for repeat in range(1 if batch_size >= args.one_repeat_from else args.repeats):
            names = [v for v in variants
                     if v != "no_cache" or (batch_size <= args.no_cache_up_to and repeat < args.no_cache_repeats)]
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                torch.manual_seed(repeat)
                start = time.perf_counter()
                _, tokens = variants[name](batch)
                elapsed = time.perf_counter() - start
                raw[name].setdefault(batch_size, []).append({"seconds": elapsed, "tokens": tokens})
        print(f"# generation batch {batch_size} done", file=sys.stderr)

    # right padding: does a short prompt still get the answer it gets alone? Greedy, so only padding differs.
    greedy = {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS, "pad_token_id": tokenizer.pad_token_id}
    batch = texts[:8]
    with torch.no_grad():
        right = encode(batch, "right")
        together = stack.peft.generate(**right, **greedy)[:, right["input_ids"].shape[1]:]
        alone = []
        for text in batch:
            enc = encode([text], "left")
            alone.append(stack.peft.generate(**enc, **greedy)[0, enc["input_ids"].shape[1]:])
    differs = sum(not torch.equal(together[i][:len(alone[i])], alone[i]) for i in range(len(batch))) / len(batch)

    shape = model_shape(modeling.resolve_model_path(config.name))
    rates = floors.machine_rates(shape)
    layout_rows = [b for b in sizes if b in (1, 8, 32)] or sizes[:1]
    layout_figures = {str(rows): linear_layouts(shape, rows) for rows in layout_rows}
    print(f"# layouts {json.dumps(layout_figures)}", file=sys.stderr)
    lines: list[dict[str, Any]] = []
    for batch_size in sizes:
        line: dict[str, Any] = {"workload": f"batch_{batch_size}"}
        for name in variants:
            runs = raw[name].get(batch_size)
            if not runs:
                continue
            line[name] = {"tokens_per_s": round(common.median([r["tokens"] / r["seconds"] for r in runs]), 1),
                          "seconds": round(common.median([r["seconds"] for r in runs]), 3),
                          "tokens": common.median([r["tokens"] for r in runs])}
        line["ratios"] = {"throughput_vs_defaults": round(line["ours"]["tokens_per_s"] / line["defaults"]["tokens_per_s"], 3),
                          "seconds_generate_over_ours": round(line["generate"]["seconds"] / line["ours"]["seconds"], 3),
                          "throughput_vs_adapters": round(line["ours"]["tokens_per_s"] / line["adapters"]["tokens_per_s"], 3),
                          "seconds_adapters_over_ours": round(line["adapters"]["seconds"] / line["ours"]["seconds"], 3)}
        if "no_cache" in line:
            line["ratios"]["throughput_vs_no_cache"] = round(line["ours"]["tokens_per_s"] / line["no_cache"]["tokens_per_s"], 3)
        line["floors"] = sampling_floors(shape, config.lora.r, work[batch_size], line["ours"]["seconds"], rates)
        for name in ("generate", "adapters"):
            line[f"floors_{name}"] = sampling_floors(shape, config.lora.r, work[batch_size], line[name]["seconds"], rates)
        common.emit(line)
        lines.append(line)
    common.save("generation", {
        "machine": machine,
        "versions": common.versions("torch", "transformers", "peft"),
        "machine_rates": rates,
        "layouts": layout_figures,
        "settings": {"model": "smollm2-135m-instruct", "dtype": "float32",
                     "adapter": "LoRA r=16, enabled; ours and generate on the working copy, adapters through it unmerged",
                     "max_new_tokens": MAX_NEW_TOKENS, "temperature": TEMPERATURE, "repeats": args.repeats,
                     "one_repeat_from_batch": args.one_repeat_from,
                     "threads": args.threads},
        "right_padding_changes_greedy_answers": differs,
        "note": "2-core machine shared with other jobs: variants interleaved within each batch size, medians of repeats.",
        "results": lines,
        "raw": {name: {str(b): runs for b, runs in by_size.items()} for name, by_size in raw.items()},
    })


def linear_layouts(shape: Any, rows: int, megabytes: int = 320, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Per weight shape (in x out) of the model: microseconds of one (rows x in) product, the best of `repeats`
    rounds over enough distinct weights to fill `megabytes`, with `F.linear` on the stored (out x in) weight
    and on oneDNN's packed copy (the working copy's layout); and the weights' GB/s for each."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_width or shape.hidden
    return {f"{n_in}x{n_out}": one_layout(n_out, n_in, rows, megabytes, repeats)
            for n_out, n_in in sorted({(h, h), (kv, h), (i, h), (h, i), (shape.vocab, h)})}


def one_layout(out_features: int, in_features: int, rows: int, megabytes: int, repeats: int) -> dict[str, float]:
    import torch
    from torch.nn import functional as F

    size = out_features * in_features * 4
    weights = [torch.randn(out_features, in_features) for _ in range(max(2, megabytes * 2**20 // size))]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
    x = torch.randn(rows, in_features)

    def best(run: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) / len(weights))
        return min(times)

    stored = best(lambda: [F.linear(x, w) for w in weights])
    on_copy = best(lambda: [torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "") for p in packed])
    return {"linear_us": round(stored * 1e6, 1), "packed_us": round(on_copy * 1e6, 1),
            "linear_gbps": round(size / stored / 1e9, 2), "packed_gbps": round(size / on_copy / 1e9, 2)}


def sampling_floors(shape: Any, lora_r: int, work: list[tuple[list[int], int]], seconds: float,
                    rates: dict[str, float]) -> dict[str, float]:
    """Ours' sampling at one batch size against its floors (floors.sampling_report), on its real prompts and
    its median steps."""
    steps = round(common.median([s for _, s in work]))
    return {"steps": steps, **floors.sampling_report(shape, work[0][0], steps, lora_r, seconds, rates)}


if __name__ == "__main__":
    main()
