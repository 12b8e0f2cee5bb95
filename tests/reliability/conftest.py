"""Fixtures the reliability tests share."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: bad input must be refused first."""
    from align.core import base_model, modeling, tokenizer, tuning

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded although the input is bad")

    # where each loader is defined, and modeling's re-export of it
    for module, name in ((base_model, "load_base"), (tokenizer, "load_tokenizer"), (tuning, "attach_tuning")):
        monkeypatch.setattr(module, name, must_not_load)
        monkeypatch.setattr(modeling, name, must_not_load)
    monkeypatch.chdir(ROOT)  # `tests.ppo.toy_reward` imports from here
