"""The C heap of a CPU run: glibc keeps the pages of freed buffers (activations, logits, quantisation
scratch) mapped and often cannot reuse them for the next, differently sized ones, so a training
loop's resident memory climbs step after step above what it holds live. Trimming hands those pages
back to the OS."""

from __future__ import annotations

import ctypes
import functools
import gc
from typing import TYPE_CHECKING

from align.core import malloc

if TYPE_CHECKING:
    import torch

_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018  (glibc's; raises elsewhere)
    except (AttributeError, OSError):  # not glibc: its allocator manages its own pages
        return None
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.restype = _MallInfo2
    return libc


def free_mb() -> float | None:
    """Bytes the heap holds free (glibc's mallinfo2 `fordblks`), in MB; None where unknown (not glibc's, or
    tbbmalloc's)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2") or malloc.in_use():  # glibc's calls: glibc's idle heap
        return None
    return libc.mallinfo2().fordblks / 2**20


def trim(min_free_mb: float = 0.0) -> None:
    """Return the heap's free pages to the OS (glibc's malloc_trim) when it holds at least
    min_free_mb free; elsewhere nothing.

    The pages given back are faulted in again when reused, so a trim pays where much is free: on
    SmolLM2-135M a trim between PPO micro-batches took 60-110 ms, and one after each optimiser step
    lowered the peak of 2 updates from 2445 to 2265 MB (fp32) at the same update time (4-bit with
    recomputed activations, trimmed after every micro-batch: 1629 to 1380 MB); on the tests' 2-layer
    model, with 7 MB free, it only slowed the step. Measured 2026-12-02."""
    libc = _libc()
    if libc is None or malloc.in_use():  # tbbmalloc keeps freed blocks for reuse and returns them itself
        return
    free = free_mb() if min_free_mb > 0 else None
    if free is None or free >= min_free_mb:
        libc.malloc_trim(0)


TBBMALLOC_CLEAN_ALL_BUFFERS = 0  # tbbmalloc's scalable_allocation_command


def release() -> None:
    """Collect what Python no longer reaches (models, tensors in reference cycles), then trim; on tbbmalloc
    (core.malloc) also hand back the free blocks it keeps for reuse."""
    gc.collect()
    libc = _libc()
    if libc is not None and malloc.in_use():  # preloaded, so its library's symbols are in the global scope
        libc.scalable_allocation_command(TBBMALLOC_CLEAN_ALL_BUFFERS, None)
    else:
        trim()


# a training step frees hundreds of MB on SmolLM2 and under 10 on the tests' 2-layer model
STEP_MIN_FREE_MB = 64


def after_step(device: "torch.device") -> None:
    """After an optimiser step on the CPU: trim, so the step's freed activations do not stay resident
    under the next steps' (a GPU's memory is torch's caching allocator's, not the heap's).

    PPO's. Not the reward stage's: its demo step frees several GB at once, and faulting them in again
    made the step a third slower (10.1 -> 13.4 s) for 9.3 -> 7.7 GB; halving its batch with
    grad_accum 2 gave 6.5 GB at no cost."""
    if device.type == "cpu":
        trim(min_free_mb=STEP_MIN_FREE_MB)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BUFFER_BYTES = 2**20


def large_buffers_from_mmap() -> None:
    """Fix glibc's mmap threshold at 1 MB for the rest of the process (elsewhere nothing): a large buffer
    (activations, dequantised weights) that free heap space cannot hold gets its own mapping, given back
    to the OS when freed, and the heap's free top is handed back at the default trim threshold.

    Left dynamic, glibc raises both thresholds as large buffers are freed (the mmap one up to 32 MB), so
    a training forward's activations come from the heap, where differently sized micro-batches leave
    holes nothing reuses and nothing is handed back. On
    SmolLM2-135M NF4 (2026-12-05) one forward + backward of 4 x 512 tokens with recomputed activations
    left the process 3.9 GB above its weights with the dynamic threshold, 0.33 GB with 1 MB fixed (what
    autograd holds: 0.16 MB a token), at 10-30% more time for the page faults; without recomputation,
    1 x 512 tokens 1.75 -> 1.15 GB. A process on tbbmalloc (core.malloc, the `align` command's on a CPU) has
    neither cost and ignores the setting: its allocator is not glibc's."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)
