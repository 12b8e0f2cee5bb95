"""Where our PPO update spends its time: cProfile (Python-level) and torch.profiler (operators) over
a few updates of the ppo_vs_trl workload, after one warm-up update.

    .venv/bin/python -m bench.profile_ppo [--workload tiny|smollm2] [--updates 5] [--torch] [--plain]

`--plain` times the updates without any profiler (medians per phase), for before/after comparisons.
Not part of `make bench`; its findings are in bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="tiny", choices=["tiny", "smollm2"])
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torch", action="store_true", help="also the torch.profiler operator table")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--plain", action="store_true", help="time the updates only, no profiler")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from align.core import rundir
    from align.core.records import load_records
    from align.ppo.train import PPOTrainer
    from bench import workloads
    from bench.ppo_vs_trl import SETTINGS, our_config

    s = SETTINGS[args.workload]
    with tempfile.TemporaryDirectory(prefix="align-profile-") as tmp:
        paths = workloads.prepare(args.workload, Path(tmp))
        config = our_config(paths, s, f"{tmp}/run")
        out = rundir.StageDir(config.out_dir)
        out.prepare(overwrite=True, resume=False)
        trainer = PPOTrainer(config, out)
        batch = load_records(config.data.prompts, "prompts")[: s["batch_size"]]
        trainer.step(batch)  # warm-up
        if args.plain:
            import json
            import statistics

            rows = [trainer.step(batch)[0] for _ in range(args.updates)]
            print(json.dumps({k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0] if k.startswith("time/")}))
            return
        profile = cProfile.Profile()
        phases: dict[str, float] = {}
        start = time.perf_counter()
        profile.enable()
        for _ in range(args.updates):
            stats, _ = trainer.step(batch)
            for k, v in stats.items():
                if k.startswith("time/"):
                    phases[k] = phases.get(k, 0.0) + v / args.updates
        profile.disable()
        print(f"{args.workload}: {(time.perf_counter() - start) / args.updates:.3f} s per update under cProfile; "
              + ", ".join(f"{k[5:]} {v:.3f}" for k, v in phases.items()))
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
        if args.torch:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.updates):
                    trainer.step(batch)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
