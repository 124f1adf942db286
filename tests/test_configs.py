"""Every shipped config file is accepted by train.py's settings parser and builds its model (on the meta device, so
the 125M-scale configs cost no memory): a renamed Config field or a bad head count in a config fails here."""

import glob
import re
import os

import pytest
import torch

from common.settings import parse_config
from conftest import ROOT
from train import DEFAULTS

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "config", "**", "*.py"), recursive=True))


def test_configs_are_found():
    assert len(CONFIGS) >= 15 and any(p.endswith("llama_shakespeare_char_fast.py") for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "config")))
def test_config_parses_and_builds(path):
    # A study's row (config/ladder/, config/length/) runs on top of the base.py beside it, as the study runs it.
    base = os.path.join(os.path.dirname(path), "base.py")
    configs = [base, path] if os.path.isfile(base) and path != base else [path]
    cfg, module, model_kwargs = parse_config(configs, DEFAULTS, "train.py")
    assert cfg["batch_size"] >= 1 and cfg["learning_rate"] > 0
    model_kwargs.setdefault("vocab_size", 50304 if cfg["dataset"] != "shakespeare_char" else 65)
    with torch.device("meta"):
        model = module.Model(module.Config(**model_kwargs))
    n = sum(p.numel() for p in model.parameters())
    assert n > 0 and model.flops_per_token() > 0


def test_every_config_a_comment_or_the_readme_names_exists():
    """A config's comments (and the README) point readers at other configs: those files must exist."""
    texts = [open(p).read() for p in CONFIGS] + [open(os.path.join(ROOT, "README.md")).read()]
    named = {m for t in texts for m in re.findall(r"\bconfig/[\w/]+\.py", t)}
    named.discard("config/train_shakespeare_char.py")  # nanoGPT's own config, in the README's comparison command
    assert named and all(os.path.isfile(os.path.join(ROOT, n)) for n in named), \
        sorted(n for n in named if not os.path.isfile(os.path.join(ROOT, n)))
