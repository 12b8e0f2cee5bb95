"""Peak-memory figures: each stage of `align run` (one process) reports its own peak."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.core import tracking


def test_peak_memory_restarts_from_a_reset():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("the kernel's peak-RSS reset is Linux's")
    block = b"x" * (300 * 2**20)  # written, so resident
    del block  # a large block goes back to the OS at once
    before = tracking.peak_memory_mb()["memory/peak_rss_mb"]
    tracking.reset_peak_memory()
    after = tracking.peak_memory_mb()["memory/peak_rss_mb"]
    assert after < before - 250
