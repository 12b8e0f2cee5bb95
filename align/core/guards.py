"""Numerical and memory faults in training, turned into messages a person can act on.

    explain_out_of_memory   an out-of-memory error becomes an OutOfMemory naming the settings to lower
    NonFiniteGradients      a transformers callback that stops before a non-finite gradient reaches the weights
    halt_trainer            saves a transformers Trainer's healthy state and says where it is
    ConstantReward          counts consecutive rollouts whose reward is one value for every response

PPO's own guards (KL, ratio, non-finite rewards and losses) live in its loop; these are the ones
the stages share.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

from align.core.errors import OutOfMemory, TrainingHalted


def is_out_of_memory(error: BaseException) -> bool:
    """Host or accelerator memory ran out: MemoryError, torch.OutOfMemoryError, or a RuntimeError
    whose text says so (older torch, CPU allocator, MPS)."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(error, oom_type):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _setting(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def memory_advice(config: Any, lower: tuple[str, ...] = (), raise_: tuple[str, ...] = (),
                  enable: tuple[str, ...] = ()) -> str:
    """`lower training.batch_size (now 8), ...`: every setting with its current value."""
    def now(key: str) -> str:
        value = _setting(config, key)
        return str(value).lower() if isinstance(value, bool) else str(value)

    parts = []
    if lower:
        parts.append("lower " + ", ".join(f"{k} (now {now(k)})" for k in lower))
    if raise_:
        parts.append("raise " + ", ".join(f"{k} (now {now(k)})" for k in raise_) + " to keep the effective batch")
    if enable:
        parts.append("set " + ", ".join(f"{k}=true (now {now(k)})" for k in enable))
    return "; ".join(parts)


@contextlib.contextmanager
def explain_out_of_memory(stage: str, advice: str) -> Iterator[None]:
    """Re-raise an out-of-memory error as an OutOfMemory that names the settings to lower."""
    try:
        yield
    except BaseException as e:
        if not is_out_of_memory(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(f"{stage} ran out of memory ({type(e).__name__}: {first}). To fit, {advice}") from None


class NonFinite(Exception):
    """Raised inside transformers' training loop; halt_trainer turns it into a TrainingHalted."""


def nonfinite_callback() -> Any:
    """A TrainerCallback that stops training when a gradient is NaN or infinite.

    It runs after gradient clipping and before the optimiser step: transformers' clipping does not
    stop a NaN (it scales every gradient by NaN), and its loss logging hides one (logging_nan_inf_filter),
    so without this a NaN loss silently turns every weight into NaN."""
    from transformers import TrainerCallback

    class NonFiniteGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            import torch

            for name, param in model.named_parameters():
                if param.grad is not None and not torch.isfinite(param.grad).all():
                    raise NonFinite(f"the gradient of {name} is not finite (the loss was NaN or infinite)")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            # a finite gradient times a huge learning rate overflows the weights: stop before this
            # step's checkpoint (saved after on_step_end) would hold them
            if state.global_step % args.save_steps == 0 or control.should_save:
                from align.core.checkpoint import first_nonfinite, trainable

                bad = first_nonfinite(trainable(model))
                if bad is not None:
                    raise NonFinite(f"the weights are not finite after it ({bad}): lower the learning rate")

    return NonFiniteGradients()


def halt_trainer(trainer: Any, error: NonFinite, stage: str, advice: str) -> TrainingHalted:
    """Save the Trainer's state (weights, optimiser, scheduler: all still those of the last finished
    step) as a resumable checkpoint, and return the error that says what happened and where it is."""
    from align.core.checkpoint import first_nonfinite, resume_point, trainable

    step = trainer.state.global_step
    target = Path(trainer.args.output_dir) / f"checkpoint-{step}"
    if first_nonfinite(trainable(trainer.model)) is not None:
        where = resume_point(Path(trainer.args.output_dir))
        return TrainingHalted(f"{stage} stopped at step {step}: {error}. That state was not saved; {where}. {advice}")
    if not (target / "trainer_state.json").exists():
        # transformers has no public call that writes a resumable checkpoint now
        trainer._save_checkpoint(trainer.model, trial=None)
    return TrainingHalted(f"{stage} stopped at step {step + 1}: {error}. The weights were not updated with it; "
                          f"the state after step {step} is in {target}. {advice}; `--resume` continues from there")


class ConstantReward:
    """How many rollouts in a row gave every response the same reward.

    A reward model whose head collapsed (or a rule that never fires) scores everything alike; PPO's
    advantages then hold only the KL penalty and the policy drifts with nothing to learn."""

    def __init__(self, limit: int, tolerance: float = 1e-6):
        self.limit, self.tolerance, self.run = limit, tolerance, 0

    def update(self, scores: list[float]) -> str | None:
        """A message once `limit` constant rollouts in a row were seen, else None."""
        if not self.limit or not scores:
            return None
        spread, centre = max(scores) - min(scores), sum(scores) / len(scores)
        self.run = self.run + 1 if spread <= self.tolerance * max(1.0, abs(centre)) else 0
        if self.run < self.limit:
            return None
        return (f"the reward gave all {len(scores)} responses the same score ({centre:.6g}) in {self.run} rollouts "
                f"in a row: a reward model that outputs a constant gives PPO nothing to learn; check that reward.model "
                f"tells answers apart (its eval/accuracy and eval/reward_std), or set guards.constant_reward_updates=0 "
                f"if a constant reward is intended")


def collapsed(rewards: list[float], tolerance: float = 1e-6) -> bool:
    """Every reward the same, up to float noise."""
    if not rewards:
        return False
    centre = sum(rewards) / len(rewards)
    return max(rewards) - min(rewards) <= tolerance * max(1.0, abs(centre))
