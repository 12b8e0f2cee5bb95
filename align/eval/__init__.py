"""Stage 4: evaluation. Models answer the same held-out prompts; rewards, win rates, KL to the base,
reference metrics, perplexity, multiple choice, best-of-n and a judge compare them in one report.

Python API: `align.eval.run.evaluate(EvalConfig) -> {"<model>/<metric>": value}`.
"""
