"""Stage 4: models side by side on held-out prompts, in order:

    check every input (prompts, models, reward model, judge, benchmarks) before loading a model
    -> each base loaded once, its adapters on it -> every model answers: greedy, then sampled with
       the same seeds (checkpointed per model) -> judge, KL to the base, perplexity, multiple choice
    -> the reward model scores every distinct answer -> best-of-n rows -> figures, generations.jsonl,
       metrics.json, report.md/html with charts, a W&B run
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from align.core import distributed, rundir, tracking
from align.core.callables import load_callable
from align.core.config import dump_yaml, to_dict
from align.core.errors import AlignError, ConfigError
from align.core.records import Prompt, load_records
from align.eval import benchmarks, compare, few_shot, harness, plots, report, scores
from align.eval.config import META, EvalConfig
from align.eval.generate import Answers, answer, encode_prompts
from align.eval.models import ModelPool, ModelSpec, View, dequantize_4bit, on_gpu, resolve

log = logging.getLogger(__name__)

GENERATIONS = "generations.jsonl"
ANSWERS = "answers.json"


class JudgeError(AlignError):
    """The judge failed on every answer it was given: it is broken, not one answer."""


@dataclass
class Inputs:
    prompts: list[Prompt]
    specs: dict[str, ModelSpec]
    judge: Callable[[str, str], float] | None
    documents: list[str] | None
    questions: list[benchmarks.Question] | None
    demonstrations: tuple[dict, ...] = ()  # of the in-context row (few_shot.py), whose spec is the reference's


def check_inputs(config: EvalConfig) -> Inputs:
    """Everything the user named, read and checked, so a mistake stops the run before any model loads."""
    prompts = load_records(config.prompts, "prompts")[: config.eval_size or None]
    specs = {name: resolve(name, source) for name, source in config.models.items()}
    demonstrations: tuple[dict, ...] = ()
    if config.few_shot:
        demonstrations = few_shot.demonstrations(config.few_shot_data, config.few_shot, prompts, config.seed)
        specs[few_shot.row_name(config.few_shot)] = resolve(few_shot.row_name(config.few_shot),
                                                            config.models[config.reference])
    if config.reward is not None:
        from align.reward import members

        members.check(config.reward)
    elif config.best_of:
        raise ConfigError("best_of: best-of-n picks answers by reward; set reward (an `align reward` directory)")
    for key, directory in [*(("stages." + k, v) for k, v in config.stages.items()),
                           *(("ppo_runs." + k, v) for k, v in config.ppo_runs.items())]:
        if not (Path(directory) / rundir.METRICS_LOG).is_file():
            raise AlignError(f"{key}: {directory} holds no {rundir.METRICS_LOG} to draw curves from")
    judge = load_callable(config.judge) if config.judge else None
    documents = benchmarks.read_documents(config.perplexity_text) if config.perplexity_text else None
    questions = benchmarks.read_questions(config.mmlu)[: config.mmlu_size or None] if config.mmlu else None
    if config.benchmarks:
        harness.check_names(config.benchmarks, harness.task_manager(config.benchmark_tasks))
    return Inputs(prompts, specs, judge, documents, questions, demonstrations)


def evaluate(config: EvalConfig, *, overwrite: bool = False, resume: bool = False,
             allow_changes: bool = False) -> dict[str, float]:
    """Run the evaluation into config.out_dir; returns the flat `<model>/<metric>` figures of metrics.json."""
    inputs = check_inputs(config)
    out = rundir.StageDir(config.out_dir)
    with distributed.stage_run(out, dump_yaml(config), overwrite=overwrite, resume=resume, allow_changes=allow_changes):
        return Evaluation(config, out, inputs).run(resume=resume)


class Evaluation:
    def __init__(self, config: EvalConfig, out: rundir.StageDir, inputs: Inputs):
        self.config, self.out, self.inputs = config, out, inputs
        self.prompts = inputs.prompts
        self.boot = {"samples": config.bootstrap_samples, "seed": config.seed}
        self.timings: dict[str, float] = {}
        self.kl_per_prompt: dict[str, list[float]] = {}  # model -> its kl_to_base per prompt, for the per-task figures
        self._judged: dict[tuple[int, str], tuple[float | None, str | None]] = {}

    def run(self, *, resume: bool) -> dict[str, float]:
        started = time.perf_counter()
        pool = ModelPool(self.inputs.specs, self.config.quantization)
        self.quantization = {name: pool.quantization_of(name) for name in self.inputs.specs}
        self.timings["load_s"] = time.perf_counter() - started
        self.tasks, self.unavailable = self.benchmark_tasks()
        answers = self.answer_all(pool, resume)
        extra = {name: self.model_figures(pool, name, answers[name]) for name in self.inputs.specs}
        del pool
        gc.collect()
        start = time.perf_counter()
        rewards = self.score(answers) if self.config.reward else None
        self.timings["scoring_s"] = time.perf_counter() - start
        rows = self.rows(answers, rewards, extra)
        by_name = {row.name: row for row in rows}
        per_row = {row.name: compare.row_metrics(row, by_name, self.config.compare_to, self.references, self.boot,
                                                    self.config.text_metrics)
                   for row in rows}
        self.add_task_figures(per_row, rows)
        self.timings["runtime_s"] = time.perf_counter() - started
        metrics = compare.flat(per_row)
        metrics.update({f"{META}/prompts": len(self.prompts), f"{META}/models": len(self.inputs.specs),
                        **{f"{META}/{k}": round(v, 2) for k, v in self.timings.items()},
                        f"{META}/peak_rss_mb": tracking.peak_memory_mb()["memory/peak_rss_mb"]})
        self.write_generations(rows, answers, rewards)
        charts = self.charts(per_row, rows)
        columns = compare.headline_metrics(per_row)
        report.write(report.Report(self.title(), self.setup(), per_row, columns, charts, self.examples(rows),
                                   self.config.bootstrap_samples, self.config.reference), self.out.path)
        self.publish(metrics, per_row, columns, charts, rows)
        return metrics

    # ---------------------------------------------------------------- answers

    @property
    def references(self) -> list[str | None]:
        return [p.reference for p in self.prompts]

    def fingerprint(self, spec: ModelSpec) -> dict[str, Any]:
        """What a model's answers depend on: resumed answers are reused only when all of it matches."""
        c = self.config
        return {"source": spec.source, "base": spec.base, "adapter": str(spec.adapter), "prompts": c.prompts,
                "eval_size": c.eval_size, "generation": asdict(c.generation), "samples_per_seed": c.samples_per_seed,
                "quantization": self.quantization[spec.name],
                **({"demonstrations": list(self.inputs.demonstrations)} if self.in_context(spec.name) else {})}

    def in_context(self, name: str) -> bool:
        return bool(self.config.few_shot) and name == few_shot.row_name(self.config.few_shot)

    def view(self, pool: ModelPool, name: str) -> View:
        """The model as it answers: the in-context row is the reference base with its demonstrations."""
        view = pool.view(name)
        return replace(view, demonstrations=self.inputs.demonstrations) if self.in_context(name) else view

    def answer_all(self, pool: ModelPool, resume: bool) -> dict[str, Answers]:
        from tqdm import tqdm

        done = self.load_checkpoint() if resume else {}
        todo = [name for name in self.inputs.specs if name not in done]
        per_model = len(self.prompts) * (1 + self.config.samples_per_seed * len(self.config.generation.seeds))
        start = time.perf_counter()
        answers = dict(done)
        with tqdm(total=per_model * len(todo), desc="answers", unit="answer") as progress:
            for name in todo:
                progress.set_postfix_str(name)
                answers[name] = answer(self.view(pool, name), self.prompts, self.config.generation,
                                       self.config.samples_per_seed, progress)
                self.save_checkpoint(answers)
                self.judge_row(name, answers[name].greedy)
        self.timings["generation_s"] = time.perf_counter() - start
        for name in done:
            self.judge_row(name, answers[name].greedy)
        return {name: answers[name] for name in self.inputs.specs}

    def save_checkpoint(self, answers: dict[str, Answers]) -> None:
        """All answers so far in checkpoints/checkpoint-<models done>/; older ones go."""
        body = {"fingerprints": {n: self.fingerprint(self.inputs.specs[n]) for n in answers},
                "answers": {n: a.to_dict() for n, a in answers.items()}}
        target = self.out.checkpoints / f"checkpoint-{len(answers)}"
        rundir.write_text_atomic(target / ANSWERS, json.dumps(body))
        for old in self.out.checkpoints.glob("checkpoint-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> dict[str, Answers]:
        newest = self.out.newest_checkpoint()
        if newest is None or not (newest / ANSWERS).exists():
            return {}
        body = json.loads((newest / ANSWERS).read_text(encoding="utf-8"))
        kept = {name: Answers.from_dict(body["answers"][name]) for name, spec in self.inputs.specs.items()
                if body["fingerprints"].get(name) == json.loads(json.dumps(self.fingerprint(spec)))}
        log.warning("resuming: answers of %s reused from %s", ", ".join(kept) or "no model", newest)
        return kept

    # ---------------------------------------------------------------- judge

    def judge_row(self, name: str, answers: list) -> list[float | None] | None:
        """Judge each answer; one that raises is recorded (error in generations.jsonl, count in metrics)."""
        fn = self.inputs.judge
        if fn is None:
            return None
        results = []
        for p, a in enumerate(answers):
            key = (p, a.text)
            if key not in self._judged:
                self._judged[key] = self._judge_one(fn, self.prompts[p], a.text)
            results.append(self._judged[key])
        if results and all(score is None for score, _ in results):
            raise JudgeError(f"judge {self.config.judge!r} failed on every one of {len(results)} answers of "
                             f"model {name!r}; the first: {results[0][1]}")
        return [score for score, _ in results]

    @staticmethod
    def _judge_one(fn: Callable, prompt: Prompt, text: str) -> tuple[float | None, str | None]:
        try:
            value = fn(prompt.messages[-1]["content"], text)
        except Exception as e:  # a user's function: any failure is one recorded error
            return None, f"{type(e).__name__}: {e}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None, f"returned {value!r}, not a finite number"
        return float(value), None

    def judged(self, p: int, text: str) -> tuple[float | None, str | None] | None:
        return self._judged.get((p, text))

    # ---------------------------------------------------------------- figures that need the models

    def model_figures(self, pool: ModelPool, name: str, answers: Answers) -> dict[str, float]:
        out: dict[str, float] = {}
        view = pool.view(name)
        with self.timed("kl_s"):
            out.update(self.kl_to_base(pool, name, answers))
        if self.in_context(name):
            return out  # the reference's own weights: its perplexity and multiple choice are the reference's row
        if self.inputs.documents is not None:
            with self.timed("perplexity_s"):
                out["perplexity"] = benchmarks.perplexity(view, self.inputs.documents, self.config.perplexity_max_length)
        if self.tasks and view.prefix:
            log.warning("no benchmarks for %r: lm-eval runs the model without its soft prompt", name)
        elif self.tasks:
            with self.timed("benchmarks_s"):
                done = harness.per_document(view, self.tasks, self.manager, limit=self.config.benchmarks_limit,
                                            batch_size=self.config.generation.batch_size)
            for task, correct in done.items():
                out.update(scores.with_ci(harness.metric_name(task), correct, **self.boot))
        return out

    def add_task_figures(self, per_row: dict[str, dict[str, float]], rows: list[compare.Row]) -> None:
        """Every per-prompt figure again over each task's prompts, as `<metric>@<task>`, where prompts name a task."""
        tasks = [p.task for p in self.prompts]
        for task, (keep, cut) in compare.task_rows(rows, tasks, self.kl_per_prompt, self.boot).items():
            by_name = {row.name: row for row in cut}
            for row in cut:
                figures = compare.row_metrics(row, by_name, self.config.compare_to, [self.references[i] for i in keep],
                                              self.boot, self.config.text_metrics)
                per_row[row.name].update({f"{m}{compare.TASK_SEP}{task}": v for m, v in figures.items()})

    def benchmark_tasks(self) -> tuple[list[str], dict[str, str]]:
        """The lm-eval tasks to run (the local multiple-choice file first), and the unavailable ones with why."""
        tasks, include = [], None
        if self.inputs.questions is not None:
            include = harness.write_local_task(self.inputs.questions, self.out.path / "lm_eval_tasks")
            tasks.append(harness.LOCAL_TASK)
        if not tasks and not self.config.benchmarks:
            return [], {}
        self.manager = harness.task_manager(include, self.config.benchmark_tasks)
        ok, missing = harness.available(self.config.benchmarks, self.manager)
        return tasks + ok, missing

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Add the block's wall time to timings[key] (eval/<key> in metrics.json)."""
        start = time.perf_counter()
        yield
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def kl_to_base(self, pool: ModelPool, name: str, answers: Answers) -> dict[str, float]:
        """k1 estimate of KL(π‖π_base) per answer, averaged per prompt, on the sampled answers (greedy if none)."""
        from align.eval.likelihood import answers_logprobs

        reference = self.config.reference
        if name == reference:
            self.kl_per_prompt[name] = [0.0] * len(self.prompts)
            return scores.with_ci("kl_to_base", self.kl_per_prompt[name], **self.boot)
        view = self.view(pool, name)
        ref = pool.view(reference) if reference in self.inputs.specs else pool.base_view(name)
        if ref is None:
            return {}
        if not view.same_vocabulary(ref):
            log.warning("no kl_to_base for %r: its tokenizer differs from %r's", name, ref.label)
            return {}
        per_prompt = answers.sampled if answers.sampled and answers.sampled[0] else [[a] for a in answers.greedy]
        g = self.config.generation
        tokens = [[a.token_ids for a in row] for row in per_prompt]
        logp = [[a.logprob for a in row] for row in per_prompt]  # recorded while generating
        if not all(math.isfinite(x) for row in logp for x in row):  # answers from an older checkpoint
            logp = answers_logprobs(view, encode_prompts(view, self.prompts, g.max_prompt_length), tokens,
                                    g.temperature, g.batch_size)
        # the reference reads the prompt alone: π_ref(a | x), whatever the row was shown before x
        logp_ref = answers_logprobs(ref, encode_prompts(ref, self.prompts, g.max_prompt_length), tokens,
                                    g.temperature, g.batch_size)
        kl = [sum(m - r for m, r in zip(lm, lr)) / len(lm) for lm, lr in zip(logp, logp_ref)]  # (P,) mean over answers
        self.kl_per_prompt[name] = kl
        return scores.with_ci("kl_to_base", kl, **self.boot)

    # ---------------------------------------------------------------- rewards and rows

    def score(self, answers: dict[str, Answers]) -> dict[str, tuple[list[float], list[list[float]]]]:
        """Normalised rewards (greedy (P,), sampled (P, S)) per model; each distinct answer scored once."""
        from tqdm import tqdm

        from align.eval.prefix import reward_scores
        from align.reward import members
        from align.reward.score import conversation_text

        reward_model = members.load(self.config.reward, self.config.reward_objective, self.config.reward_uwo_lambda)
        if not on_gpu():
            dequantize_4bit(reward_model.model)
        distinct: dict[tuple[int, str], float] = {}
        for a in answers.values():
            for p in range(len(self.prompts)):
                for text in [a.greedy[p].text] + [s.text for s in a.sampled[p]]:
                    distinct.setdefault((p, text), math.nan)
        # batches of similar lengths waste less compute on padding
        keys = sorted(distinct, key=lambda k: (len(self.prompts[k[0]].messages[-1]["content"]) + len(k[1]), k))
        chunk = 4 * self.config.generation.batch_size
        for start in tqdm(range(0, len(keys), chunk), desc="rewards", unit="batch"):
            part = keys[start:start + chunk]
            texts = [conversation_text(reward_model.tokenizer, list(self.prompts[p].messages), t) for p, t in part]
            rewards = reward_model.normalised(lambda: reward_scores(reward_model, texts,
                                                                    batch_size=self.config.generation.batch_size))
            distinct.update(zip(part, rewards.tolist()))
        return {name: ([distinct[(p, a.greedy[p].text)] for p in range(len(self.prompts))],
                       [[distinct[(p, s.text)] for s in a.sampled[p]] for p in range(len(self.prompts))])
                for name, a in answers.items()}

    def rows(self, answers: dict[str, Answers], rewards: dict | None, extra: dict[str, dict[str, float]]) -> list[compare.Row]:
        rows = []
        for name, a in answers.items():
            row = compare.Row(name, name, a.greedy, rewards[name][0] if rewards else None,
                              self.judge_row(name, a.greedy), dict(extra[name]))
            if rewards and a.sampled and a.sampled[0]:
                per_prompt = [sum(r) / len(r) for r in rewards[name][1]]
                row.extra.update(scores.with_ci("reward_mean_sampled", per_prompt, **self.boot))
            rows.append(row)
        n = self.config.best_of
        if n and rewards:
            for name, a in answers.items():
                picked = scores.best_of(rewards[name][1], n)
                chosen = [a.sampled[p][i] for p, i in enumerate(picked)]
                bo = compare.best_of_name(name, n)
                rows.append(compare.Row(bo, name, chosen, [rewards[name][1][p][i] for p, i in enumerate(picked)],
                                        self.judge_row(bo, chosen)))
        return rows

    # ---------------------------------------------------------------- outputs

    def write_generations(self, rows: list[compare.Row], answers: dict[str, Answers], rewards: dict | None) -> None:
        """One record per prompt: the prompt, its reference, and every row's answer with each of its scores."""
        lines = []
        for p, prompt in enumerate(self.prompts):
            record: dict[str, Any] = {"prompt": prompt.messages[-1]["content"], "messages": list(prompt.messages),
                                      "reference": prompt.reference, "answers": {}}
            for row in rows:
                a = row.answers[p]
                entry: dict[str, Any] = {"text": a.text, "tokens": len(a.token_ids), "has_eos": a.has_eos}
                if row.rewards is not None:
                    entry["reward"] = row.rewards[p]
                judged = self.judged(p, a.text) if self.inputs.judge else None
                if judged is not None:
                    entry["judge"], entry["judge_error"] = judged
                if row.name == row.model and answers[row.name].sampled[p]:
                    entry["samples"] = [{"text": s.text, **({"reward": rewards[row.name][1][p][k]} if rewards else {})}
                                        for k, s in enumerate(answers[row.name].sampled[p])]
                record["answers"][row.name] = entry
            lines.append(json.dumps(record, ensure_ascii=False))
        rundir.write_text_atomic(self.out.file(GENERATIONS), "\n".join(lines) + "\n")

    def charts(self, per_row: dict[str, dict[str, float]], rows: list[compare.Row]) -> list[tuple[str, Path]]:
        where = self.out.path / plots.PLOTS
        out = []
        if any("judge_mean" in f for f in per_row.values()):
            out.append(("The gold judge per model", plots.judge(per_row, where / "judge.png")))
        with_rewards = {row.name: row.rewards for row in rows if row.rewards is not None}
        if with_rewards:
            out.append(("Reward distribution per model", plots.reward_distribution(with_rewards, where / "rewards.png")))
            opponents = [c for c in self.config.compare_to if c in self.inputs.specs]
            if opponents:
                out.append(("Win rates", plots.win_rates(per_row, opponents, where / "win_rates.png")))
            points = {row.name: (compare.lengths(row), row.rewards) for row in rows
                      if row.rewards is not None and not compare.BEST_OF.search(row.name)}
            out.append(("Reward against answer length", plots.reward_vs_length(points, where / "reward_vs_length.png")))
            if any("kl_to_base" in f for f in per_row.values()):
                out.append(("Reward against KL to the base", plots.reward_vs_kl(per_row, where / "reward_vs_kl.png")))
        runs = dict(self.config.ppo_runs)
        if "ppo" in self.config.stages and self.config.stages["ppo"] not in runs.values():
            runs = {"ppo": self.config.stages["ppo"], **runs}
        path = plots.overoptimisation(runs, where / "overoptimisation.png") if runs else None
        if path is not None:
            out.append(("Over-optimisation, per PPO run: where the gold judge falls while the proxy reward climbs "
                        "with the KL, the reward model is being exploited", path))
        for stage, directory in self.config.stages.items():
            path = plots.training_curves(stage, directory, where / f"curves_{stage}.png")
            if path is not None:
                out.append((f"Training curves: {stage} ({directory})", path))
        return out

    def title(self) -> str:
        return f"Evaluation: {', '.join(self.inputs.specs)}"

    def setup(self) -> list[tuple[str, str]]:
        c, g = self.config, self.config.generation
        lines = [(f"model {name}", f"{spec.source} (base {spec.base}" + (f", adapter {spec.adapter})" if spec.adapter else ")"))
                 for name, spec in self.inputs.specs.items()]
        lines += [("prompts", f"{len(self.prompts)} from {c.prompts}"),
                  ("generation", f"greedy + {c.samples_per_seed} sampled per seed {g.seeds}, temperature {g.temperature}, "
                                 f"top_p {g.top_p}, max_new_tokens {g.max_new_tokens}"),
                  ("precision of the bases", ", ".join(f"{n} {q}" for n, q in self.quantization.items())),
                  ("reward model", c.reward or "none"), ("judge", c.judge or "none"),
                  ("perplexity text", c.perplexity_text or "none"), ("multiple choice", c.mmlu or "none"),
                  ("benchmarks (lm-eval, zero-shot)", ", ".join(c.benchmarks) or "none"),
                  *((f"benchmark {task}", f"unavailable: {why}") for task, why in self.unavailable.items()),
                  ("time", ", ".join(f"{k} {v:.0f}" for k, v in self.timings.items()))]
        return lines

    def examples(self, rows: list[compare.Row]) -> list[dict[str, str]]:
        out = []
        for p, prompt in enumerate(self.prompts[: self.config.examples_in_report]):
            ex = {"prompt": prompt.messages[-1]["content"]}
            if any(r is not None for r in self.references):
                ex["reference"] = prompt.reference or ""
            for row in rows:
                note = f" (r {row.rewards[p]:.2f})" if row.rewards is not None else ""
                ex[row.name] = row.answers[p].text + note
            out.append(ex)
        return out

    def publish(self, metrics: dict[str, float], per_row: dict, columns: list[str], charts: list, rows: list) -> None:
        """metrics.json and metrics.jsonl, and the W&B run (offline unless logged in) with tables and charts."""
        run = tracking.start_wandb(self.config.tracking, self.out.path, "eval", to_dict(self.config))
        log_ = tracking.MetricsLog(self.out.path, run)
        log_.log(0, metrics)
        log_.update(metrics)
        if run is None:
            return
        import wandb

        comparison = wandb.Table(columns=["model"] + columns,
                                 data=[[name] + [f.get(m) for m in columns] for name, f in per_row.items()])
        gen_columns = ["prompt", "reference"] + [c for row in rows for c in (row.name, f"{row.name}/reward")]
        generations = wandb.Table(columns=gen_columns, data=[
            [p.messages[-1]["content"], p.reference] +
            [v for row in rows for v in (row.answers[i].text, row.rewards[i] if row.rewards else None)]
            for i, p in enumerate(self.prompts)])
        run.log({"eval/comparison": comparison, "eval/generations": generations,
                 **{f"charts/{path.stem}": wandb.Image(str(path), caption=caption) for caption, path in charts}})
        run.finish()
