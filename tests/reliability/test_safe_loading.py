"""Safe loading: weights only from safetensors, no pickles, `trust_remote_code` only when the user
asks, and the W&B key in no file a run writes."""

from __future__ import annotations

import ast
import subprocess

import pytest

from align.core.errors import AlignError
from tests.conftest import ROOT
from tests.reliability import stages

SOURCES = [p for d in ("align", "sft", "reward", "bench") for p in sorted((ROOT / d).rglob("*.py"))]
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("dill", "load"), ("dill", "loads"),
              ("joblib", "load"), ("cloudpickle", "load"), ("cloudpickle", "loads"), ("yaml", "load"),
              ("yaml", "unsafe_load"), ("yaml", "full_load"), ("pandas", "read_pickle"), ("pd", "read_pickle")}


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _is(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Every call that could run code from a file, or turn that off, as `FILE:LINE: what`."""
    tree = ast.parse(source, filename)
    aliases = {}  # `from torch import load as tload` -> tload: ("torch", "load")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for name in node.names:
                aliases[name.asname or name.name] = (*node.module.split("."), name.name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        name = aliases.get(name[0], name[:1]) + name[1:] if name else name
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{filename}:{node.lineno}"
        if name == ("torch", "load") and not _is(keywords.get("weights_only"), True):
            found.append(f"{where}: torch.load without weights_only=True")
        if name[-2:] in UNPICKLERS:
            found.append(f"{where}: {'.'.join(name)} can run code from the file")
        if name in (("np", "load"), ("numpy", "load")) and _is(keywords.get("allow_pickle"), True):
            found.append(f"{where}: numpy.load with allow_pickle=True")
        for key, bad in (("trust_remote_code", True), ("safe_serialization", False), ("use_safetensors", False)):
            if _is(keywords.get(key), bad):
                found.append(f"{where}: {key}={bad}")
    return found


def test_the_checker_finds_each_unsafe_call():
    snippet = "\n".join([
        "import torch, pickle, yaml, numpy as np",
        "from torch import load as tload",
        "torch.load(p)",
        "torch.load(p, weights_only=False)",
        "tload(p)",
        "pickle.loads(b)",
        "yaml.load(text)",
        "np.load(p, allow_pickle=True)",
        "AutoModel.from_pretrained(p, trust_remote_code=True)",
        "model.save_pretrained(p, safe_serialization=False)",
        "AutoModel.from_pretrained(p, use_safetensors=False)",
        "torch.load(p, weights_only=True)",  # fine
        "from safetensors.torch import load",
        "load(data)",  # fine: safetensors' own
        "yaml.safe_load(text)",  # fine
        "AutoModel.from_pretrained(p, trust_remote_code=config.trust_remote_code)",  # fine: the user's choice
    ])
    found = unsafe_calls(snippet)
    assert [f.split(":")[1] for f in found] == [str(n) for n in range(3, 12)], found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_file_loads_unsafely(path):
    assert unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))) == []


def test_every_stage_leaves_remote_code_off_by_default():
    from align.core.config import load_config
    from align.ppo.config import PPOConfig
    from align.prefs.config import DPOConfig, OnlineConfig
    from align.reward.config import RewardConfig
    from align.sft.config import SFTConfig

    for cls in (SFTConfig, RewardConfig, PPOConfig, DPOConfig, OnlineConfig):
        assert load_config(cls).model.trust_remote_code is False, cls.__name__


def test_a_model_with_pickled_weights_only_is_refused(tiny_model_dir, tmp_path):
    """transformers would fall back to pytorch_model.bin, which torch unpickles."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from align.core import modeling

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(load_file(tiny_model_dir / "model.safetensors"), pickled / "pytorch_model.bin")
    tokenizer = modeling.load_tokenizer(str(tiny_model_dir))
    with pytest.raises(AlignError, match="cannot load model .*safetensors"):
        modeling.load_base(modeling.ModelConfig(name=str(pickled), quantization="none"), tokenizer)


def test_the_wandb_key_lands_in_no_file(tiny_model_dir, tmp_path):
    """SFT logs to W&B through transformers' callback, the reward model through our own wandb.init:
    both run offline with a key in the environment, and no file they write holds it."""
    data = stages.preference_file(tmp_path / "prefs.jsonl")
    key = "sentinel0wandb0key0" + "5f3a9c1e7b2d4068" * 2  # 40 characters, like a real key
    runs = {}
    for stage in ("sft", "reward"):
        out = tmp_path / stage
        command = [*stages.argv(stage, tiny_model_dir, data, out, "tracking.wandb=true"), "--set", "training.max_steps=2"
                   if stage == "sft" else "training.epochs=0.2"]
        runs[stage] = (out, subprocess.Popen(command, cwd=ROOT, env=stages.environment(WANDB_MODE="offline",
                                                                                         WANDB_API_KEY=key),
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for stage, (out, process) in runs.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
        assert key not in output
        files = [p for p in out.rglob("*") if p.is_file()]
        assert any("wandb" in p.parts and p.suffix == ".wandb" for p in files), f"{stage}: W&B did not run"
        holding = [str(p.relative_to(out)) for p in files if key.encode() in p.read_bytes()]
        assert holding == [], f"{stage}: the W&B key is in {holding}"
