"""
Optimizers and learning-rate schedules for train.py: which parameters go to which optimizer and with what weight
decay (one rule, configure_optimizer's docstring), and the learning rate at each step (get_lr). The optimizers torch
lacks are one file each: common/lion.py, common/sophia.py.
"""

import math

import torch

from common import die
from common.lion import Lion
from common.sophia import SophiaG

OPTIMIZERS = ("adamw", "lion", "sophia", "muon")
SCHEDULES = ("cosine", "noam", "constant", "wsd", "cosine_restarts")


def get_lr(it, cfg, time_frac=None):
    """Learning rate at iteration it. Every schedule but 'constant' and 'noam' warms up linearly over warmup_iters,
    then follows its shape over the horizon: progress 0 -> 1 from warmup_iters to lr_decay_iters, or with a time
    budget (time_frac = share of max_seconds used) over the budget, so every model gets a whole schedule in the same
    wall-clock time.
    cosine: cosine from learning_rate to min_lr, then flat.
    wsd (warmup-stable-decay; Hu et al. 2024, "MiniCPM"): flat at learning_rate, then a 1-sqrt decay to min_lr over
      the last wsd_decay_frac of the horizon, or from iteration wsd_decay_start to lr_decay_iters if that is set (a
      plateau checkpoint annealed later). 1-sqrt rather than linear: Hägele et al. 2024 ("Scaling Laws and
      Compute-Optimal Training Beyond Fixed Training Durations") find it beats a linear cooldown of the same length
      and, with a 20% cooldown, matches cosine.
    cosine_restarts (SGDR; Loshchilov & Hutter 2017): cosine cycles that restart at learning_rate; the first spans
      restart_period of the horizon, each next one restart_mult times longer (SGDR's T_0 and T_mult). Past the
      horizon the cycles go on.
    noam (Vaswani et al. 2017, eq. 3): linear warmup, then inverse square root; learning_rate carries d_model^-0.5."""
    lr, min_lr, warmup, schedule = cfg["learning_rate"], cfg["min_lr"], cfg["warmup_iters"], cfg["schedule"]
    if schedule == "constant":
        return lr
    if schedule == "noam":
        step = it + 1
        return lr * min(step ** -0.5, step * warmup ** -1.5)
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    progress = (it - warmup) / max(1, cfg["lr_decay_iters"] - warmup)
    progress = progress if time_frac is None else time_frac
    if schedule == "wsd":
        start = cfg["wsd_decay_start"]
        if start > 0:
            x = (it - start) / max(1, cfg["lr_decay_iters"] - start)
        else:
            x = (progress - (1 - cfg["wsd_decay_frac"])) / cfg["wsd_decay_frac"]
        return lr if x <= 0 else min_lr + (lr - min_lr) * (1 - math.sqrt(min(x, 1.0)))
    if schedule == "cosine_restarts":
        length = cfg["restart_period"]
        while progress - length > 1e-9:  # skip the cycles done (one ends at min_lr, despite rounding; then restarts)
            progress, length = progress - length, length * cfg["restart_mult"]
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress / length)) * (lr - min_lr)
    if progress > 1:
        return min_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def decays(p):
    """Weight decay on matmul weights and embeddings, not on biases or norm gains (nor what a model marks)."""
    return p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)


def muon_params(model):
    """The hidden matrices, Muon's share (the rule: configure_optimizer's docstring)."""
    tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    tokens = [t for t in tables if t.size(0) >= model.config.vocab_size]
    shapes = set()
    if tokens:  # the token table: the fewest rows among the tables with at least vocab_size (position tables: more)
        shape = tuple(min(tokens, key=lambda t: t.size(0)).shape)
        shapes = {shape, shape[::-1]}
    tables = {id(t) for t in tables}
    return [p for p in model.parameters() if p.requires_grad and decays(p) and p.dim() == 2
            and id(p) not in tables and tuple(p.shape) not in shapes]


class MuonAdamW:
    """torch.optim.Muon for the hidden matrices and AdamW for the rest, as one optimizer: param_groups (Muon's, then
    AdamW's; train.py sets their lr), step, zero_grad, state_dict and load_state_dict. GradScaler works with it as
    with a plain optimizer: finding no _step_supports_amp_scaling here, unscale_ divides every gradient of both by the
    scale and checks them all for inf/NaN, and step calls step() (Muon then AdamW) only if all are finite, so with
    fp16 on CUDA a step is skipped for both or for neither and the scale backs off, as with AdamW alone."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):
        return self.muon.param_groups + self.adamw.param_groups

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("it holds no Muon + AdamW state")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def configure_optimizer(model, cfg, device):
    """cfg['optimizer'] over model's parameters, by one rule for every optimizer and every model file:
    - a parameter decays (weight_decay) iff p.dim() >= 2 and it is not marked p._no_weight_decay: matmul weights and
      embeddings decay; biases, norm gains and what a model marks (Mamba's A_log and D) do not.
    - with 'muon', Muon takes the decaying 2-D parameters that are neither an embedding nor the output head, AdamW
      the rest (embeddings, the head, biases, norms, anything not 2-D such as stacked experts or conv kernels).
      Decided by types, shapes and tying, never by names: an embedding is the weight of an nn.Embedding module
      (token, position and relative-position tables; a head tied to the token table is that same tensor); the
      untied head is a parameter shaped like the token table, or its transpose (the token table: the nn.Embedding
      with the fewest rows among those with at least vocab_size rows).
    'adamw' (fused on CUDA and CPU), 'lion' and 'sophia' take two groups (decay, no decay); 'muon' takes Muon's
    group and AdamW's two. Every group starts at learning_rate (Muon's update is scaled to AdamW's RMS, Liu et al.
    2025, "Muon is Scalable for LLM Training", so one learning rate and weight decay serve both)."""
    name, lr = cfg["optimizer"], cfg["learning_rate"]
    hidden = muon_params(model) if name == "muon" else []
    if name == "muon" and not hidden:
        die(f"optimizer='muon' needs 2-D hidden matrices and {type(model).__module__.replace('.', '/')}.py as "
            f"configured has none (its 2-D parameters are embeddings or the output head); use one of 'adamw', "
            f"'lion', 'sophia'")
    to_muon = {id(h) for h in hidden}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in to_muon]
    groups = [{"params": [p for p in params if decays(p)], "weight_decay": cfg["weight_decay"]},
              {"params": [p for p in params if not decays(p)], "weight_decay": 0.0}]
    if name == "lion":
        return Lion(groups, lr=lr, betas=cfg["lion_betas"])
    if name == "sophia":
        return SophiaG(groups, lr=lr, betas=cfg["sophia_betas"], gamma=cfg["sophia_gamma"])
    adamw = torch.optim.AdamW(groups, lr=lr, betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["adam_eps"],
                              fused=device.type in ("cuda", "cpu"))
    if name == "adamw":
        return adamw
    muon = torch.optim.Muon(hidden, lr=lr, weight_decay=cfg["weight_decay"], momentum=cfg["muon_momentum"],
                            adjust_lr_fn="match_rms_adamw")
    return MuonAdamW(muon, adamw)
