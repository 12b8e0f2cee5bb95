"""transformers' Trainer (SFT, DPO, GRPO, RLOO) resumed from any checkpoint, the last one included,
to the figures of a run never stopped.

    end_callback       logs at every checkpoint and the last step, evaluates before the last save,
                       and stops a train() resumed at max_steps before the step past it
    NothingLeftToTrain what that stop raises; the caller catches it: the checkpoint is the end state
    mean_logged_loss   the mean training loss over every step, resumed or not
    restore_token_count  TRL's count of tokens trained on, which no checkpoint state holds
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class NothingLeftToTrain(Exception):
    """Raised at the start of a resumed train() whose checkpoint already holds every step."""


def end_callback() -> Any:
    """A TrainerCallback that lets a run resumed from any checkpoint, the last one included, end with
    the figures of a run never stopped (transformers 5.25):

    - it logs at every checkpoint and at the last step, so the log history a checkpoint saves covers
      every step before it: the run's mean loss is read from it, and a resumed run's first logged
      loss averages the same steps as an unbroken run's (transformers starts a new logging interval
      at the checkpoint it resumes from, and would lose an unlogged tail before it).
    - it evaluates the last step before the last checkpoint is written (eval_strategy "epoch" would
      evaluate after it, at the epoch's end), so that checkpoint holds the final eval loss.
    - resumed from a checkpoint at max_steps, transformers runs a step past it (its epoch loop does
      not look at global_step before the first step): this stops train() before that step."""
    from transformers import TrainerCallback

    class ResumableEnd(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                raise NothingLeftToTrain()

        def on_step_end(self, args, state, control, **kwargs):
            last = state.global_step >= state.max_steps
            if last or (args.save_strategy == "steps" and state.global_step % state.save_steps == 0):
                control.should_log = True
            if last and args.eval_strategy == "epoch":
                control.should_evaluate = True

        def on_epoch_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and args.eval_strategy == "epoch":
                control.should_evaluate = False  # done at the last step, above

    return ResumableEnd()


def mean_logged_loss(history: list[dict[str, Any]]) -> float | None:
    """The mean training loss over every step of the run, from the logged means and the steps each covers.

    transformers' `training_loss` averages only the steps of one train() call (5.25), so after a
    resume it leaves out the steps before the checkpoint."""
    total, last = 0.0, 0
    for entry in history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last else None


def restore_token_count(trainer: Any, checkpoint: Path | None) -> None:
    """TRL counts the tokens seen in the trainer, not in the state it checkpoints: carry the count
    the checkpoint's log history last recorded."""
    if checkpoint is None or not hasattr(trainer, "_total_train_tokens"):
        return
    history = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8")).get("log_history", [])
    trainer._total_train_tokens = next((e["num_tokens"] for e in reversed(history) if "num_tokens" in e), 0)
