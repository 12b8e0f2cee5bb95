"""Fixtures the reliability tests share."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: bad input must be refused first."""
    from align.core import modeling

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded although the input is bad")

    for name in ("load_base", "load_tokenizer", "attach_tuning"):
        monkeypatch.setattr(modeling, name, must_not_load)
    monkeypatch.chdir(ROOT)  # `tests.ppo.toy_reward` imports from here
