"""Optimizers and schedules (common/optim.py, common/lion.py, common/sophia.py): Lion against lion-pytorch, Sophia-G
against the paper's Algorithm 3 written out here, Muon's parameter groups in every model file, GradScaler with the
Muon + AdamW pair, the schedules' values (the old ones unchanged), the WSD anneal of a plateau checkpoint, the
one-line errors, and AdamW training bitwise as before."""

import copy
import glob
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.lion import Lion
from common.optim import MuonAdamW, configure_optimizer, get_lr, muon_params
from common.settings import load_model_module, read_settings
from common.sophia import SophiaG, gauss_newton_bartlett
from conftest import ROOT, TINY, run
from train import DEFAULTS

CPU = torch.device("cpu")

# train.py's get_lr and configure_optimizer before optimizers and schedules moved to common/optim.py, verbatim: the
# reference for "cosine, noam, constant and AdamW are unchanged".
OLD = '''
import math
import torch


def get_lr(it, cfg, time_frac=None):
    if cfg["schedule"] == "constant":
        return cfg["learning_rate"]
    if cfg["schedule"] == "noam":  # Vaswani et al. 2017, eq. 3; learning_rate carries the d_model^-0.5 factor
        step = it + 1
        return cfg["learning_rate"] * min(step ** -0.5, step * cfg["warmup_iters"] ** -1.5)
    if it < cfg["warmup_iters"]:  # cosine: linear warmup, cosine decay to min_lr, then flat
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    ratio = (it - cfg["warmup_iters"]) / max(1, cfg["lr_decay_iters"] - cfg["warmup_iters"])
    ratio = ratio if time_frac is None else time_frac
    if ratio > 1:
        return cfg["min_lr"]
    return cfg["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg["learning_rate"] - cfg["min_lr"])


def configure_optimizer(model, cfg, device):
    decays = lambda p: p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)  # noqa: E731
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if decays(p)], "weight_decay": cfg["weight_decay"]},
              {"params": [p for p in params if not decays(p)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["adam_eps"],
                             fused=device.type in ("cuda", "cpu"))
'''


def old_functions():
    scope = {}
    exec(OLD, scope)
    return scope["get_lr"], scope["configure_optimizer"]


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# ----------------------------------------------------------------------------------------------------------------
# Lion and Sophia, update for update


def test_lion_matches_lion_pytorch():
    lion_pytorch = pytest.importorskip("lion_pytorch")
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (4, 3), (7,), (2, 3, 4)]
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    ours, theirs = ([p.clone().requires_grad_() for p in start] for _ in range(2))
    groups = lambda ps: [{"params": ps[:2], "weight_decay": 0.3}, {"params": ps[2:], "weight_decay": 0.0}]  # noqa
    opts = [Lion(groups(ours), lr=1e-2, betas=(0.9, 0.99)),
            lion_pytorch.Lion(groups(theirs), lr=1e-2, betas=(0.9, 0.99))]
    for step in range(8):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        for opt, params in zip(opts, (ours, theirs)):
            for group in opt.param_groups:
                group["lr"] = 1e-2 * (1 - step / 10)  # a schedule, as train.py sets it
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    assert max_diff(ours, start) > 0.05  # they moved
    assert max_diff(ours, theirs) <= 1e-15


class Tiny(nn.Module):
    """A token embedding and an untied output layer with a bias, with the model interface's forward."""

    def __init__(self, V=13, C=5):
        super().__init__()
        self.wte, self.head = nn.Embedding(V, C), nn.Linear(C, V)

    def forward(self, idx, targets=None):
        logits = self.head(self.wte(idx))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def test_sophia_matches_algorithm_3():
    """Sophia-G as Algorithm 3 of Liu et al. 2023 (Gauss-Newton-Bartlett estimator, Algorithm 2), written out step by
    step with the cross-entropy gradient in closed form, against SophiaG + gauss_newton_bartlett as train.py calls
    them (k = 3: Hessian refreshes at t = 1, 4, 7), float64, weight decay on the matrices only."""
    lr, beta1, beta2, gamma, eps, wd, k, T = 0.05, 0.965, 0.99, 10.0, 1e-12, 0.1, 3, 8  # gamma: both sides of the clip
    torch.manual_seed(0)
    model = Tiny().double()
    x = torch.randint(0, 13, (4, 6))
    y = torch.randint(0, 13, (4, 6))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    N, V = x.numel(), 13

    # SophiaG, as train.py drives it: the estimate on the step's batch first, every k steps, then the step
    opt = SophiaG([{"params": [model.wte.weight, model.head.weight], "weight_decay": wd},
                   {"params": [model.head.bias], "weight_decay": 0.0}], lr=lr, betas=(beta1, beta2), gamma=gamma)
    torch.manual_seed(1)
    for it in range(T):
        if it % k == 0:
            gauss_newton_bartlett(opt, model, x, y, nullcontext())
        model(x, y)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # Algorithm 3
    def grads(theta, labels):
        """Gradient of the mean cross-entropy over the N tokens, in closed form: dlogits = (softmax - onehot) / N."""
        h = theta["wte.weight"][x.view(-1)]  # (N, C)
        p = torch.softmax(F.linear(h, theta["head.weight"], theta["head.bias"]), dim=-1)  # (N, V)
        d = (p - F.one_hot(labels.view(-1), V)) / N
        return {"wte.weight": torch.zeros_like(theta["wte.weight"]).index_add_(0, x.view(-1), d @ theta["head.weight"]),
                "head.weight": d.T @ h, "head.bias": d.sum(0)}

    theta = dict(start)
    m = {n: torch.zeros_like(p) for n, p in theta.items()}  # m_0 = 0
    h = {n: torch.zeros_like(p) for n, p in theta.items()}  # h_{1-k} = 0
    clipped = unclipped = 0
    torch.manual_seed(1)
    for t in range(1, T + 1):
        g = grads(theta, y)  # g_t
        m = {n: beta1 * m[n] + (1 - beta1) * g[n] for n in theta}
        if t % k == 1:  # h_hat_t = B * g_hat * g_hat, g_hat on labels sampled from the model (Algorithm 2)
            logits = F.linear(theta["wte.weight"][x.view(-1)], theta["head.weight"], theta["head.bias"])
            y_hat = torch.distributions.Categorical(logits=logits).sample()
            g_hat = grads(theta, y_hat)
            h = {n: beta2 * h[n] + (1 - beta2) * (N * g_hat[n] * g_hat[n]) for n in theta}
        for n in theta:
            if n != "head.bias":
                theta[n] = theta[n] - lr * wd * theta[n]  # weight decay
            z = m[n] / torch.clamp(gamma * h[n], min=eps)
            clipped += int((z.abs() > 1).sum())
            unclipped += int(((z != 0) & (z.abs() < 1)).sum())
            theta[n] = theta[n] - lr * z.clamp(-1, 1)  # clip(z, 1)
    assert clipped > 100 and unclipped > 100  # both sides of the clip are exercised
    ours = dict(model.named_parameters())
    assert max((theta[n] - start[n]).abs().max().item() for n in theta) > 0.1
    assert max((ours[n] - theta[n]).abs().max().item() for n in theta) <= 1e-14


# ----------------------------------------------------------------------------------------------------------------
# Muon: which parameters it takes, in every model file


def small_model(path, **overrides):
    """The model of a config file (the evolution study's ~0.8M-parameter ones), vocabulary 97."""
    settings = read_settings([path])
    module = load_model_module(settings["model"])
    fields = {f for f in module.Config.__dataclass_fields__}
    kwargs = {k: v for k, v in settings.items() if k in fields}
    torch.manual_seed(0)
    return module.Model(module.Config(**{**kwargs, "vocab_size": 97, **overrides}))


MODEL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "config", "evolution", "[0-9]*.py"))) + [
    os.path.join(ROOT, "config", "bert_shakespeare_char.py"), os.path.join(ROOT, "config", "ladder", "base.py")]


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=[os.path.basename(p)[:-3] for p in MODEL_CONFIGS])
def test_muon_takes_every_hidden_matrix_and_nothing_else(path):
    """In every model file the rule (types, shapes, tying; no names) picks exactly the nn.Linear weights other than
    the output head (named here, by the test, to check the rule against)."""
    for tied in (True, False):
        model = small_model(path)
        fields = model.config.__dataclass_fields__
        key = next((k for k in ("tie_embeddings", "tie_word_embeddings") if k in fields), None)
        if key is None and not tied:
            continue
        if key is not None:
            model = small_model(path, **{key: tied})
        head = [getattr(model, n).weight for n in ("lm_head", "output")
                if isinstance(getattr(model, n, None), nn.Linear)]
        linears = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        expected = [w for w in linears if not any(w is h for h in head)]
        got = muon_params(model)
        assert expected and len(got) == len(expected) and all(any(p is w for w in expected) for p in got)


def groups_of(model):
    """(Muon's parameter names, AdamW's) under optimizer='muon'."""
    opt = configure_optimizer(model, {**DEFAULTS, "optimizer": "muon"}, CPU)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = sorted(names[id(p)] for g in opt.muon.param_groups for p in g["params"])
    adamw = sorted(names[id(p)] for g in opt.adamw.param_groups for p in g["params"])
    assert len(muon) + len(adamw) == len(names)
    return muon, adamw


def test_muon_groups_of_gpt2_llama_mamba_moe():
    gpt2, llama, mamba, moe = (load_model_module(n) for n in ("gpt2", "llama", "mamba", "moe"))
    # GPT-2 with block_size == n_embd: wpe (32 x 32) has the shape of the attention output projection, yet is a
    # position table (an nn.Embedding) and stays with AdamW; the tied head is the token embedding
    muon, adamw = groups_of(gpt2.Model(gpt2.Config(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=97)))
    assert muon == sorted(f"transformer.h.{i}.{m}.weight" for i in range(2)
                          for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert "transformer.wpe.weight" in adamw and "transformer.wte.weight" in adamw
    # GPT-2 at block_size 128 > vocab_size 65: the position table has more rows than the vocabulary, and c_fc (128 x 32)
    # its shape; the token table is still wte (the fewest rows of those >= vocab_size)
    muon, adamw = groups_of(gpt2.Model(gpt2.Config(n_layer=1, n_head=2, n_embd=32, block_size=128, vocab_size=65)))
    assert "transformer.h.0.mlp.c_fc.weight" in muon and len(muon) == 4
    # LLaMA untied: the output layer (97 x 32, the token table's shape) is the head and goes to AdamW
    muon, adamw = groups_of(llama.Model(llama.Config(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, vocab_size=97,
                                                     tie_embeddings=False)))
    assert muon == sorted(f"layers.{i}.{m}.weight" for i in range(2)
                          for m in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                                    "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"))
    assert {"output.weight", "tok_embeddings.weight"} <= set(adamw)
    # Mamba: the four projections; A_log is 2-D but not decayed, the depthwise conv kernel is 3-D
    muon, adamw = groups_of(mamba.Model(mamba.Config(n_layer=2, d_model=32, vocab_size=97)))
    assert muon == sorted(f"backbone.layers.{i}.mixer.{m}.weight" for i in range(2)
                          for m in ("in_proj", "x_proj", "dt_proj", "out_proj"))
    assert {"backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.conv1d.weight"} <= set(adamw)
    # MoE: attention and the router; the experts are stacked (E, H, C) tensors, 3-D, for AdamW
    muon, adamw = groups_of(moe.Model(moe.Config(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, vocab_size=97,
                                                 n_expert=4)))
    assert len(muon) == 10 and sum(".router." in n for n in muon) == 2
    assert sum(n.endswith((".w1", ".w2", ".w3")) for n in adamw) == 6
    # T5 with span corruption, untied: the output layer has vocab_size + sentinel rows, the token table's shape
    t5 = small_model(os.path.join(ROOT, "config", "evolution", "1b_t5.py"), objective="span")
    muon, adamw = groups_of(t5)
    assert {"lm_head.weight", "shared.weight"} <= set(adamw) and t5.lm_head.weight.size(0) > 97


def test_muon_adamw_with_grad_scaler_steps_as_without():
    """GradScaler's unscale_ and step see both optimizers' gradients through param_groups: scaled by 2^16 and
    unscaled, the steps are bitwise those without a scaler; one inf gradient anywhere skips both optimizers."""
    gpt2 = load_model_module("gpt2")
    torch.manual_seed(0)
    a = gpt2.Model(gpt2.Config(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97))
    b = copy.deepcopy(a)
    cfg = {**DEFAULTS, "optimizer": "muon"}
    opt_a, opt_b = configure_optimizer(a, cfg, CPU), configure_optimizer(b, cfg, CPU)
    assert isinstance(opt_a, MuonAdamW) and len(opt_a.param_groups) == 3
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randint(0, 97, (4, 16), generator=gen)
        scaler.scale(a(x, x)[1]).backward()
        scaler.unscale_(opt_a)
        torch.nn.utils.clip_grad_norm_(a.parameters(), 1.0)
        scaler.step(opt_a)
        scaler.update()
        opt_a.zero_grad(set_to_none=True)
        b(x, x)[1].backward()
        torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    before = [p.detach().clone() for p in a.parameters()]
    scaler.scale(a(x, x)[1]).backward()
    a.lm_head.weight.grad[0, 0] = float("inf")  # in AdamW's share; Muon's gradients are finite
    scaler.step(opt_a)
    scaler.update()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before)) and scaler.get_scale() == 2.0 ** 15


# ----------------------------------------------------------------------------------------------------------------
# Schedules


def test_cosine_noam_constant_are_unchanged():
    old_get_lr, _ = old_functions()
    for schedule in ("cosine", "noam", "constant"):
        cfg = {**DEFAULTS, "schedule": schedule, "learning_rate": 3e-3, "min_lr": 2e-4, "warmup_iters": 7,
               "lr_decay_iters": 90}
        for it in range(0, 120):
            assert get_lr(it, cfg) == old_get_lr(it, cfg)
            for frac in (0.0, 0.13, 0.5, 0.99, 1.0, 1.2):
                assert get_lr(it, cfg, frac) == old_get_lr(it, cfg, frac)


def test_wsd_values():
    cfg = {**DEFAULTS, "schedule": "wsd", "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 10,
           "lr_decay_iters": 110, "wsd_decay_frac": 0.2}
    lr = lambda it, frac=None, **kw: get_lr(it, {**cfg, **kw}, frac)  # noqa: E731
    assert lr(4) == pytest.approx(1e-3 * 5 / 11)  # warmup, as cosine's
    assert lr(10) == lr(50) == lr(90) == 1e-3  # the plateau, up to 80% of the horizon (iterations 10-110)
    assert lr(95) == pytest.approx(1e-4 + 9e-4 * (1 - 0.5))  # a quarter into the decay: 1 - sqrt(0.25)
    assert lr(110) == pytest.approx(1e-4) and lr(500) == pytest.approx(1e-4)
    # time budget: the decay is the last 20% of max_seconds
    assert lr(300, 0.5) == lr(300, 0.8) == 1e-3
    assert lr(300, 0.9) == pytest.approx(1e-4 + 9e-4 * (1 - 0.5 ** 0.5))
    assert lr(300, 1.0) == pytest.approx(1e-4)
    assert lr(300, 0.9, wsd_decay_frac=1.0) == pytest.approx(1e-4 + 9e-4 * (1 - 0.9 ** 0.5))
    # wsd_decay_start: the decay from that iteration to lr_decay_iters, whatever wsd_decay_frac says
    assert lr(60, wsd_decay_start=60) == 1e-3
    assert lr(85, wsd_decay_start=60) == pytest.approx(1e-4 + 9e-4 * (1 - 0.5 ** 0.5))
    assert lr(110, wsd_decay_start=60) == pytest.approx(1e-4)


def test_cosine_restarts_values():
    cfg = {**DEFAULTS, "schedule": "cosine_restarts", "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 10,
           "lr_decay_iters": 210, "restart_period": 0.25, "restart_mult": 2.0}
    mid = 1e-4 + 0.5 * 9e-4
    # cycles over the horizon (iterations 10-210, or max_seconds): [0, 0.25], [0.25, 0.75], [0.75, 1.75]
    for it, frac, want in ((10, 0.0, 1e-3), (35, 0.125, mid), (60, 0.25, 1e-4), (110, 0.5, mid), (160, 0.75, 1e-4),
                           (210, 1.0, 1e-4 + 0.5 * (1 + 2 ** -0.5) * 9e-4)):
        assert get_lr(it, cfg) == pytest.approx(want)
        assert get_lr(500, cfg, frac) == pytest.approx(want)  # time budget: the same shape over max_seconds
    assert get_lr(62, cfg) > 9.9e-4 and get_lr(500, cfg, 0.26) > 9.9e-4  # just past a restart: back at the top
    assert get_lr(4, cfg) == pytest.approx(1e-3 * 5 / 11)  # warmup, as cosine's
    # the defaults, 1/7 x 2: cycles of 1/7, 2/7 and 4/7 of the horizon, the third ending at it, at min_lr
    dflt = {**DEFAULTS, "schedule": "cosine_restarts", "warmup_iters": 0, "lr_decay_iters": 700}
    top, bottom = dflt["learning_rate"], dflt["min_lr"]
    for it in (100, 300, 700):
        assert get_lr(it, dflt) == pytest.approx(bottom) and get_lr(it + 1, dflt) > 0.99 * top
        assert get_lr(0, dflt, it / 700) == pytest.approx(bottom)


# ----------------------------------------------------------------------------------------------------------------
# train.py with each optimizer and schedule


def logged(out, kind):
    pat = r"^iter (\d+): loss [\d.]+, lr ([\d.e+-]+)," if kind == "lr" else \
        r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)"
    return {int(m[1]): float(m[2]) for m in re.finditer(pat, out, re.M)}


@pytest.mark.parametrize("optimizer", ["lion", "sophia", "muon"])
def test_each_optimizer_trains(workdir, optimizer):
    """20 steps at TINY's learning rate: val loss 4.08 -> 3.71 with AdamW, here 3.66 (Lion), 3.67 (Sophia), 3.74
    (Muon) on the VM this was written on."""
    p = run("train.py", *TINY, f"--optimizer={optimizer}", "--hessian_interval=3", "--out_dir=out", cwd=workdir)
    val = logged(p.stdout, "step")
    assert val[20] < val[0] - 0.3, p.stdout
    opt = torch.load(workdir / "out" / "ckpt.pt", weights_only=True)["optimizer"]
    assert ("hessian" in opt["state"][0]) if optimizer == "sophia" else True
    assert set(opt) == {"muon", "adamw"} if optimizer == "muon" else "state" in opt


def test_wsd_anneals_a_plateau_checkpoint(workdir):
    """The README's workflow: train on the plateau (the horizon far away), copy a checkpoint's folder, resume the copy
    with the decay starting at its iteration. It equals a run that decayed from that iteration all along."""
    args = [*TINY, "--schedule=wsd", "--log_interval=1"]
    run("train.py", *args, "--lr_decay_iters=100000", "--out_dir=plateau", cwd=workdir)
    shutil.copytree(workdir / "plateau", workdir / "anneal")
    anneal = ["--wsd_decay_start=20", "--max_iters=30", "--lr_decay_iters=30"]
    p = run("train.py", *args, *anneal, "--out_dir=anneal", "--resume", cwd=workdir)
    lrs = logged(p.stdout, "lr")
    assert "resumed from anneal/ckpt.pt at iter 20" in p.stdout and sorted(lrs) == list(range(21, 31))
    assert lrs[21] == 1e-3 and all(lrs[i] > lrs[i + 1] for i in range(21, 30))  # iteration 20 ran at the plateau lr
    assert lrs[30] == pytest.approx(1e-4 + 9e-4 * (1 - 0.9 ** 0.5), rel=1e-2)  # the lr of step 29: 9/10 of the decay
    assert torch.load(workdir / "plateau" / "ckpt.pt", weights_only=True)["iter_num"] == 20  # kept for later
    run("train.py", *args, *anneal, "--out_dir=direct", cwd=workdir)
    a, b = (torch.load(workdir / d / "ckpt.pt", weights_only=True)["model"] for d in ("anneal", "direct"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# A wrapper that puts the frozen pre-change get_lr and configure_optimizer into common.optim, then runs train.py.
WITH_OLD = """
import runpy, sys
sys.path.insert(0, {root!r})
import common.optim
scope = {{}}
exec({old!r}, scope)
common.optim.get_lr, common.optim.configure_optimizer = scope["get_lr"], scope["configure_optimizer"]
runpy.run_path({train!r}, run_name="__main__")
"""


def test_adamw_training_is_bitwise_unchanged(workdir):
    (workdir / "with_old.py").write_text(WITH_OLD.format(root=ROOT, old=OLD, train=os.path.join(ROOT, "train.py")))
    args = [*TINY, "--dropout=0.1", "--max_iters=15", "--lr_decay_iters=12"]  # warmup, cosine and the flat end
    new = run("train.py", *args, "--out_dir=new", cwd=workdir).stdout
    old = run([sys.executable, str(workdir / "with_old.py")], *args, "--out_dir=old", cwd=workdir).stdout
    assert logged(new, "step") == logged(old, "step")
    a, b = (torch.load(workdir / d / "ckpt.pt", weights_only=True) for d in ("new", "old"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)


ERRORS = [  # (arguments after TINY, stderr regex)
    (["--optimizer=adam"], r"optimizer='adam' is not one of 'adamw', 'lion', 'sophia', 'muon'$"),
    (["--schedule=wds"], r"schedule='wds' is not one of 'cosine', 'noam', 'constant', 'wsd', 'cosine_restarts'$"),
    (["--schedule=wsd", "--wsd_decay_frac=0"], r"wsd_decay_frac=0.0 must be in \(0, 1\]"),
    (["--schedule=wsd", "--wsd_decay_frac=1.5"], r"wsd_decay_frac=1.5 must be in \(0, 1\]"),
    (["--schedule=wsd", "--wsd_decay_start=30"], r"wsd_decay_start=30 must lie between 0 and lr_decay_iters=20"),
    (["--schedule=wsd", "--wsd_decay_start=5", "--max_seconds=10"], r"is for runs without max_seconds"),
    (["--schedule=cosine_restarts", "--restart_mult=0.5"], r"restart_period=0.14\d* must be in \(0, 1\] and "
                                                           r"restart_mult=0.5 >= 1$"),
    (["--hessian_interval=0"], r"hessian_interval=0 must be at least 1$"),
    (["--optimizer=muon", "--n_layer=0"], r"optimizer='muon' needs 2-D hidden matrices and models/gpt2.py as "
                                          r"configured has none .*; use one of 'adamw', 'lion', 'sophia'$"),
    (["--optimizer=lion", "--resume", "--out_dir=out"], r"out/ckpt.pt was trained with optimizer='adamw'; resume "
                                                        r"with --optimizer=adamw, or start a new run from its weights "
                                                        r"with --init_from=out/ckpt.pt$"),
]


def test_bad_optimizer_and_schedule_settings_get_one_line(workdir):
    run("train.py", *TINY, "--max_iters=2", "--eval_interval=2", "--out_dir=out", cwd=workdir)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda e: run("train.py", *TINY, *e[0], cwd=workdir, check=False), ERRORS))
    for (args, pattern), p in zip(ERRORS, results):
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and "Traceback" not in p.stderr and len(lines) == 1, (args, p.stderr)
        assert re.search(pattern, lines[0]), (args, lines[0])
