"""bench/gpu_check.py --dry-run: every GPU section's code path on the CPU with tiny shapes (issue #26),
so the GPU script cannot rot between GPU runs."""

import json

from bench.gpu_check import SECTIONS
from tests.bench_runs import run_bench


def _numbers(node, path=""):
    """Every number in the figures, with where it is (booleans left out)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def test_dry_run_writes_every_section(tmp_path):
    proc = run_bench("gpu_check", "--dry-run", "--out", str(tmp_path), "--workdir", str(tmp_path / "work"))
    body = json.loads((tmp_path / "gpu-cpu.json").read_text())
    assert body["dry_run"] is True and "quantization none" in body["quantization_note"]
    results = body["results"]
    assert set(results) == set(SECTIONS)
    for key in SECTIONS:
        section = results[key]
        if "error" in section or "skipped" in section:
            assert (section.get("error") or section.get("skipped")).strip(), key
            continue
        figures = {k: v for k, v in section.items() if k not in ("section_wall_s", "budget_s")}
        numbers = list(_numbers(figures))
        assert numbers, key
        for where, value in numbers:
            if where.endswith(("loss", "scoring_s", "response_length")) or "kl" in where or "scoring" in where \
                    or (where.endswith(".gc_s") and ".peer." not in where):
                continue  # a loss or a reused pass may be zero; only TRL as shipped calls gc.collect
            assert value > 0, f"{key}{where} = {value}"
    # the figures the issue asks for, where a section ran
    for mode in ("qlora", "lora"):
        assert results["a_sft"][mode]["tokens_per_s"] > 0 and results["a_sft"][mode]["mfu"] > 0
        assert results["a_sft"][mode]["peak_cpu_rss_mb"] > 0
    assert results["b_reward"]["tokens_per_s"] > 0
    for layout in ("shared_fp32", "four_fp32"):
        figures = results["c_ppo_1b"][layout]
        for phase in ("generation_s", "forward_s", "training_s", "sec_per_update"):
            assert figures[phase] > 0, (layout, phase)
    assert results["e_ppo_8b"]["fits"] is True
    # every section appears in the printed table
    for key in SECTIONS:
        assert key in proc.stdout
