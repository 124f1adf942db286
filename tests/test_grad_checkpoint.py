"""Two rules of the model interface, checked on every file in models/ with the tiny configs of test_contract.py:

- Config.grad_checkpoint: a training forward runs each block (each element of the model's block lists, the
  nn.ModuleLists; encoder and decoder layers alike) under torch.utils.checkpoint, non-reentrant, so its activations
  are recomputed in backward. The loss and every gradient equal those without it bitwise (float64: the recompute
  is the same computation), with dropout too: the recompute replays the RNG state, so it draws the same masks. And
  the blocks really do run again in backward, so a file that ignores the flag fails.
- Every dropout rate lives in an nn.Dropout's p (a dropout schedule in train.py sets p on those modules): with every
  p at 0, a training forward is deterministic and equals the eval forward, so no rate hides in a plain float."""

import dataclasses
import importlib

import pytest
import torch
import torch.nn as nn

from conftest import tokens
from test_contract import MODELS, TINY, V


def config_fields(name):
    return {f.name for f in dataclasses.fields(importlib.import_module(f"models.{name}").Config)}


def build(name, seed=0, **overrides):
    """The tiny model in float64, training mode; overrides for fields its Config has (dropout: not in Mamba's)."""
    module = importlib.import_module(f"models.{name}")
    overrides = {k: v for k, v in overrides.items() if k in config_fields(name)}
    torch.manual_seed(seed)
    return module.Model(module.Config(**{**TINY[name], **overrides})).double().train()


def loss_and_grads(model, seed=1):
    """One forward and backward on a fixed batch; the seed fixes dropout, router jitter and BERT's masking."""
    idx, targets = tokens(2, 32, V), tokens(2, 32, V, seed=2)
    torch.manual_seed(seed)
    loss = model(idx, targets)[1]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def assert_same_training(name, **overrides):
    plain = build(name, **overrides)
    ckpt = build(name, seed=1, grad_checkpoint=True, **overrides)
    ckpt.load_state_dict(plain.state_dict())
    (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(plain), loss_and_grads(ckpt)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for n, g in grads_a.items():
        assert (g is None) == (grads_b[n] is None), n
        if g is not None:
            torch.testing.assert_close(grads_b[n], g, rtol=0, atol=0, msg=lambda m: f"{name}: {n}: {m}")


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpoint_gives_equal_loss_and_gradients(name):
    assert "grad_checkpoint" in config_fields(name), f"models/{name}.py: Config has no grad_checkpoint field"
    assert_same_training(name)


@pytest.mark.parametrize("name", [m for m in MODELS if "dropout" in config_fields(m)])
def test_grad_checkpoint_with_dropout_gives_equal_gradients(name):
    assert_same_training(name, dropout=0.2)


@pytest.mark.parametrize("name", [m for m in MODELS if config_fields(m) & {"recompute_scan", "recompute_ssd"}])
def test_grad_checkpoint_with_the_scan_recompute_on(name):
    """Mamba's own recompute of the scan (section 3.3.2) stays; a checkpointed block already recomputes its scan."""
    assert_same_training(name, recompute_scan=True, recompute_ssd=True)


def block_runs(model, grad_checkpoint):
    """How often the blocks (the elements of every nn.ModuleList) start running in forward and in backward."""
    model.config.grad_checkpoint = grad_checkpoint
    blocks = [b for m in model.modules() if isinstance(m, nn.ModuleList) for b in m]
    runs, phase = {"forward": 0, "backward": 0}, ["forward"]

    def count(module, args):
        runs[phase[0]] += 1

    handles = [b.register_forward_pre_hook(count) for b in blocks]
    idx, targets = tokens(2, 32, V), tokens(2, 32, V, seed=2)
    loss = model(idx, targets)[1]
    phase[0] = "backward"
    loss.backward()
    for h in handles:
        h.remove()
    return len(blocks), runs


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpoint_recomputes_every_block_in_backward(name):
    model = build(name)
    n_blocks, runs = block_runs(model, grad_checkpoint=False)
    assert n_blocks >= 2 and runs["backward"] == 0  # without the flag nothing runs again
    n_blocks, runs = block_runs(model, grad_checkpoint=True)
    assert runs["forward"] >= n_blocks, f"models/{name}.py: not every block ran"
    assert runs["backward"] == runs["forward"], f"models/{name}.py: {runs}: not every block is recomputed"


@pytest.mark.parametrize("name", MODELS)
def test_every_dropout_rate_is_an_nn_dropout(name):
    # mod_capacity=None: the lab's Mixture-of-Depths routes by top-k in training and by the router's sign in eval.
    model = build(name, dropout=0.1, mod_capacity=None)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts or "dropout" not in config_fields(name), f"models/{name}.py: a dropout rate but no nn.Dropout"
    for m in dropouts:
        m.p = 0.0
    idx = tokens(2, 32, V)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(idx)[0]
        torch.manual_seed(2)
        b = model(idx)[0]
        ref = model.eval()(idx)[0]
    assert torch.equal(a, b), f"models/{name}.py: training forward still random with every nn.Dropout at p=0"
    torch.testing.assert_close(a, ref, rtol=1e-12, atol=1e-12)
