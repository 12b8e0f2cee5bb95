"""heap.trim hands the pages of freed heap buffers back to the OS."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.core import heap


def rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def fragmented_heap() -> list:
    """2,000 buffers of 100 KB (below glibc's mmap threshold: heap), every other one freed: 100 MB of
    holes the allocator keeps resident. Returns the buffers still held."""
    import torch

    buffers = [torch.ones(25_600) for _ in range(2000)]
    del buffers[::2]
    return buffers


@pytest.mark.skipif(heap._libc() is None or not Path("/proc/self/status").exists(), reason="glibc on Linux")
def test_trim_returns_the_pages_of_freed_heap_buffers():
    buffers = fragmented_heap()
    freed = rss_mb()
    heap.trim()
    assert freed - rss_mb() > 50  # of the 100 MB freed
    assert all(float(b[0]) == 1.0 for b in buffers)  # what is still held is untouched


@pytest.mark.skipif(heap.free_mb() is None, reason="glibc >= 2.33")
def test_trim_leaves_a_heap_with_little_free_alone():
    buffers = fragmented_heap()  # noqa: F841  (held: only the freed half may go)
    freed = rss_mb()
    heap.trim(min_free_mb=heap.free_mb() + 100)
    assert freed - rss_mb() < 5
    heap.trim(min_free_mb=heap.free_mb() - 1)
    assert freed - rss_mb() > 50
