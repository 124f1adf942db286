"""The training recipe beyond the optimizer (common/recipe.py): label smoothing for every model file, the dropout
schedule, the curriculum (sequence-length warmup and batch-size ramp-up) and their one-line errors. Their exact
resume after SIGKILL is in tests/test_reliability.py (the "recipe" case)."""

import json

import pytest
import torch
import torch.nn.functional as F

from common.recipe import curriculum, label_smoothed, set_dropout
from conftest import TINY, run
from test_contract import MODELS, build
from test_reliability import one_line_error, with_fault
from train import DEFAULTS


def scored_targets(model, logits, targets):
    """What the logits predict, by the interface's rule, written out here: the model's loss_targets if it sets
    them, else the last logits.size(1) targets."""
    t = getattr(model, "loss_targets", None)
    return targets[:, -logits.size(1):] if t is None else t


def aux_losses(name, model, loss, ce):
    """The auxiliary part of a model's loss, from what the model reports (not from loss - ce)."""
    if name == "moe":
        s, c = model.stats, model.config
        return c.aux_loss_coef * s["aux_loss"] + c.z_loss_coef * s["z_loss"]
    if name == "lab" and model.config.mod_capacity:  # Mixture-of-Depths: its routers' BCE, in training mode
        return model.stats["mod_bce"]
    return torch.zeros((), dtype=loss.dtype)


@pytest.mark.parametrize("name", MODELS)
def test_label_smoothing_is_cross_entropy_with_label_smoothing_plus_the_aux_losses(name):
    """For every model file, in float64: the model's own loss is the cross-entropy on the targets the trainer aligns
    with its logits (plus its auxiliary losses), and the smoothed loss is F.cross_entropy(label_smoothing=eps) on
    them plus the same auxiliary losses."""
    model = build(name).train()
    torch.manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (3, 32))
    targets = torch.randint(0, model.config.vocab_size, (3, 32))
    targets[0, -3:] = -1  # ignored targets stay ignored
    logits, loss = model(idx, targets)
    t = scored_targets(model, logits, targets)
    flat, eps = (logits.flatten(0, 1), t.flatten()), 0.1
    ce = F.cross_entropy(*flat, ignore_index=-1)
    aux = aux_losses(name, model, loss, ce)
    torch.testing.assert_close(loss, ce + aux, rtol=1e-12, atol=1e-12)
    smoothed = label_smoothed(model, logits, targets, loss, eps)
    torch.testing.assert_close(smoothed, F.cross_entropy(*flat, ignore_index=-1, label_smoothing=eps) + aux,
                               rtol=1e-12, atol=1e-12)
    assert abs(smoothed.item() - loss.item()) > 1e-6  # eps 0.1 changes the loss
    assert label_smoothed(model, logits, targets, loss, 0.0) is loss  # eps 0: the model's loss untouched


def test_label_smoothing_follows_t5_span_targets():
    """T5's span corruption scores targets that are not in the input: the logits align with its loss_targets."""
    import importlib

    module = importlib.import_module("models.t5")
    torch.manual_seed(0)
    model = module.Model(module.Config(**{**dict(block_size=32, vocab_size=50, src_len=8, d_model=32, n_head=2,
                                                 d_kv=16, d_ff=64, n_encoder_layer=2, n_decoder_layer=2),
                                          "objective": "span"})).double().train()
    idx = torch.randint(0, 50, (2, 32))
    logits, loss = model(idx, idx)
    t = model.loss_targets
    assert t.shape == logits.shape[:2] and not torch.equal(t, idx[:, -logits.size(1):])
    smoothed = label_smoothed(model, logits, idx, loss, 0.2)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits.flatten(0, 1), t.flatten(), ignore_index=-1,
                                                         label_smoothing=0.2), rtol=1e-12, atol=1e-12)


def test_dropout_schedule_sets_every_nn_dropout():
    model = build("gpt2")
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) >= 5  # embeddings, and per block the attention weights, the attention output and the MLP
    cfg = {**DEFAULTS, "dropout_schedule": (0.1, 0.0)}
    for progress, p in ((0.0, 0.1), (0.25, 0.075), (1.0, 0.0), (2.0, 0.0)):
        set_dropout(model, cfg, progress)
        assert all(abs(m.p - p) < 1e-12 for m in drops)
    before = [m.p for m in drops]
    set_dropout(model, DEFAULTS, 0.5)  # off by default: the model's own rates stay
    assert [m.p for m in drops] == before


def test_curriculum_ramps_batch_and_length_linearly_then_holds():
    cfg = {**DEFAULTS, "batch_size": 12, "batch_warmup_iters": 100, "batch_warmup_start": 2, "seq_warmup_iters": 50,
           "seq_warmup_start": 8}
    assert curriculum(0, cfg, 64) == (2, 8)
    assert curriculum(25, cfg, 64) == (4, 32)  # batch 2 + 10 * 25 // 100; length 8 + 56 * 25 // 50 = 36, down to 32
    assert curriculum(50, cfg, 64) == (7, 64)
    assert curriculum(100, cfg, 64) == (12, 64) and curriculum(10_000, cfg, 64) == (12, 64)
    lengths = [curriculum(i, cfg, 64)[1] for i in range(60)]
    assert lengths == sorted(lengths) and all(L % 8 == 0 for L in lengths)
    assert curriculum(0, DEFAULTS, 64) == (DEFAULTS["batch_size"], 64)  # off by default


def test_a_run_with_the_whole_recipe_counts_its_tokens(workdir):
    """train.py with label smoothing, a dropout schedule and both ramps: the logged token count is the sum of what
    the curriculum drew, step by step, and evaluation reports the plain (unsmoothed) loss."""
    args = [*TINY, "--max_iters=30", "--eval_interval=15", "--label_smoothing=0.1", "--dropout=0.1",
            "--dropout_schedule=(0.2,0.0)", "--seq_warmup_iters=20", "--seq_warmup_start=8",
            "--batch_warmup_iters=10", "--batch_warmup_start=1", "--out_dir=out/recipe"]
    run("train.py", *args, cwd=workdir)
    log = [json.loads(line) for line in open(workdir / "out" / "recipe" / "log.jsonl")][1:]
    cfg = {**DEFAULTS, "batch_size": 4, "seq_warmup_iters": 20, "seq_warmup_start": 8, "batch_warmup_iters": 10,
           "batch_warmup_start": 1}
    drawn = [b * L for b, L in (curriculum(i, cfg, 32) for i in range(30))]
    assert [e["tokens"] for e in log] == [0, sum(drawn[:15]), sum(drawn)]
    assert sum(drawn) < 30 * 4 * 32


@pytest.mark.parametrize("bad, says", [
    ("--label_smoothing=1.0", "label_smoothing=1.0 must be in [0, 1)"),
    ("--label_smoothing=-0.1", "label_smoothing=-0.1 must be in [0, 1)"),
    ("--dropout_schedule=(0.1,)", "must be (start, end)"),
    ("--dropout_schedule=(1.5,0.0)", "must be (start, end)"),
    ("--dropout_schedule=0.1", "must be (start, end)"),
    ("--seq_warmup_iters=10 --seq_warmup_start=64", "seq_warmup_start=64 must be between 1 and block_size=32"),
    ("--batch_warmup_iters=10 --batch_warmup_start=9", "batch_warmup_start=9 must be between 1 and batch_size=4"),
])
def test_bad_recipe_settings_get_one_line(workdir, bad, says):
    line = one_line_error(run("train.py", *TINY, *bad.split(), cwd=workdir, check=False))
    assert says in line, line


def test_the_process_clock_budgets_cpu_seconds(workdir, tmp_path):
    """clock='process' measures the time budget with time.process_time (here a fake one by which every step takes
    0.5 s), so a 2-second budget is four steps, however long the wall clock says they took."""
    fake = "import time\n_t = [0.0]\ndef fake():\n    _t[0] += 0.5\n    return _t[0]\ntime.process_time = fake\n"
    args = [*TINY, "--max_iters=1000", "--max_seconds=2", "--clock=process", "--out_dir=out/clock"]
    run(with_fault(tmp_path, fake), *args, cwd=workdir)
    log = [json.loads(line) for line in open(workdir / "out" / "clock" / "log.jsonl")][1:]
    assert log[-1]["iter"] == 4 and log[-1]["time"] == 2.0
    line = one_line_error(run("train.py", *TINY, "--clock=cpu", cwd=workdir, check=False))
    assert "clock='cpu' is not one of 'wall', 'process'" in line
