"""Many processes: `accelerate launch` (or `torchrun`) starts one process per device, and a stage
run that way must train like one process on the same global batch, with one writer of files.

Our own loops (reward, PPO) need only a few collective steps, kept here; with one process every
one of them is a no-op, so the single-process path runs the same code.

    world()        this process's rank and the number of processes; starts the process group once
    check_global_batch   batch settings that every process can take an equal share of
    stage_run      a stage directory prepared, configured and marked by the main process alone
    World.on_main  the stage directory's bookkeeping, done by the main process, failures shared
    World.sum_     gradients and figures summed across processes in place, in one message
    World.gather   per-process rows (rollouts, scores) joined in rank order on every process
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from align.core.errors import AlignError

if TYPE_CHECKING:
    import torch

    from align.core.rundir import StageDir


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def on_main(self, fn: Callable[[], Any]) -> None:
        """Run fn on the main process only; the others wait for it and fail when it fails.

        Without the shared verdict a refused `prepare` (say, a finished run and no --overwrite)
        would stop the main process while the others hang in their first collective step."""
        if self.size == 1:
            fn()
            return
        import torch.distributed as dist

        error: Exception | None = None
        if self.is_main:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - shared with the others, then raised as it was
                error = e
        verdict = [None if error is None else str(error)]
        dist.broadcast_object_list(verdict, src=0)
        if error is not None:
            raise error
        if verdict[0] is not None:
            raise AlignError(f"the main process stopped: {verdict[0]}")

    def sum_(self, tensors: list["torch.Tensor"]) -> None:
        """Sum each tensor across processes, in place; one all-reduce for the lot."""
        if self.size == 1 or not tensors:
            return
        import torch
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def max(self, values: list[int]) -> list[int]:
        """Each value's largest across processes."""
        if self.size == 1:
            return values
        import torch
        import torch.distributed as dist

        box = torch.tensor(values, dtype=torch.long, device=self.device)
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return box.tolist()

    def gather(self, tensor: "torch.Tensor") -> "torch.Tensor":
        """Every process's rows joined along dim 0 in rank order; the row counts may differ."""
        if self.size == 1:
            return tensor
        import torch
        import torch.distributed as dist

        counts = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(self.size)]
        dist.all_gather(counts, torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device))
        longest = max(int(c) for c in counts)
        # all_gather wants equal shapes (gloo has no bool): pad the rows, trim after
        dtype = tensor.dtype
        padded = tensor.to(torch.uint8) if dtype == torch.bool else tensor
        padded = torch.cat([padded, padded.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:int(n)] for part, n in zip(parts, counts)]).to(dtype)

    def broadcast_(self, tensors: list["torch.Tensor"]) -> None:
        """The main process's values everywhere (as DDP does when it wraps a model)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t.data, src=0)

    @property
    def device(self) -> "torch.device":
        from accelerate import PartialState

        return PartialState().device


def check_global_batch(sizes: dict[str, int], processes: int,
                       per_process: dict[str, tuple[str, int]] | None = None) -> None:
    """Batch settings are global: each of `processes` takes an equal share, refused before anything is
    written when one does not divide. `per_process`: the setting (name, value) that each process's share
    must divide by in turn (PPO's mini-batch by its gradient accumulation)."""
    uneven = [key for key, size in sizes.items() if size % processes]
    if uneven:
        keys = " and ".join(f"{k}={sizes[k]}" for k in uneven)
        raise AlignError(f"{keys} {'is the global batch' if len(uneven) == 1 else 'are global batches'}: under "
                         f"{processes} processes {'it' if len(uneven) == 1 else 'each'} must divide by {processes}")
    for key, (setting, divisor) in (per_process or {}).items():
        share = sizes[key] // processes
        if share % divisor:
            raise AlignError(f"{key}={sizes[key]} is the global batch: its share under {processes} processes, "
                             f"{share}, must divide by {setting}={divisor}")


def world() -> World:
    """The processes the launcher started; one when the stage was not launched that way."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    import torch
    from accelerate import PartialState

    # on a machine without CUDA, accelerate joins the launched processes into one group (gloo)
    # only when asked for the CPU; otherwise each would train alone and all would write
    state = PartialState(cpu=not torch.cuda.is_available())
    return World(state.process_index, state.num_processes)


@contextlib.contextmanager
def stage_run(out: "StageDir", config_yaml: str, *, overwrite: bool, resume: bool,
              allow_changes: bool = False) -> Iterator[World]:
    """The stage directory contract under any number of processes: the main process takes the
    directory's lock, prepares it, writes config.yaml and status.json; every process runs the body
    with its World."""
    here = world()

    def prepare() -> None:
        out.prepare(overwrite=overwrite, resume=resume, config_yaml=config_yaml, allow_changes=allow_changes)
        try:
            out.write_config(config_yaml)
        except BaseException:
            out.release()
            raise

    here.on_main(prepare)
    with out.running() if here.is_main else contextlib.nullcontext():
        yield here
