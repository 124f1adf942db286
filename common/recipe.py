"""
The training recipe beyond the optimizer, for every model file alike, each one call in train.py:

- label smoothing (Szegedy et al. 2016; the 2017 Transformer's epsilon_ls = 0.1), on the logits and targets the model
  returns, its auxiliary losses (the MoE's balancing and z losses) added unchanged;
- a dropout schedule: every nn.Dropout's p moves linearly from a start to an end value over the run (seed 003's
  0.1 -> 0.0: "early dropout", Liu et al. 2023, regularises the start and lets the end fit);
- the curriculum: a sequence-length warmup (short windows first; Li et al. 2022, "The Stability-Efficiency Dilemma")
  and a batch-size ramp-up (GPT-3, Brown et al. 2020), both linear over a number of iterations.
"""

import torch
import torch.nn.functional as F

from common import die


def check_recipe(cfg, block_size):
    """One-line errors for recipe settings that cannot work, naming what would."""
    if not 0.0 <= cfg["label_smoothing"] < 1.0:
        die(f"label_smoothing={cfg['label_smoothing']} must be in [0, 1) (the 2017 paper uses 0.1)")
    ds = cfg["dropout_schedule"]
    if ds is not None and not (isinstance(ds, (tuple, list)) and len(ds) == 2
                               and all(isinstance(p, (int, float)) and 0 <= p < 1 for p in ds)):
        die(f"dropout_schedule={ds} must be (start, end) with both in [0, 1), e.g. (0.1,0.0); None keeps the dropout")
    for what, start, full in (("seq", cfg["seq_warmup_start"], block_size), ("batch", cfg["batch_warmup_start"],
                                                                             cfg["batch_size"])):
        if cfg[f"{what}_warmup_iters"] > 0 and not 1 <= start <= full:
            limit = f"block_size={full}" if what == "seq" else f"batch_size={full}"
            die(f"{what}_warmup_start={start} must be between 1 and {limit}: the warmup grows to {limit}")


def curriculum(it, cfg, block_size):
    """(batch size, sequence length) at iteration it: each grows linearly from its warmup start to the full size over
    its warmup iterations. Lengths step in multiples of 8, so a compiled model sees few shapes."""
    def ramp(start, full, iters, step):
        if iters <= 0 or it >= iters:
            return full
        return max(start, min(full, (start + (full - start) * it // iters) // step * step))

    return (ramp(cfg["batch_warmup_start"], cfg["batch_size"], cfg["batch_warmup_iters"], 1),
            ramp(cfg["seq_warmup_start"], block_size, cfg["seq_warmup_iters"], 8))


def set_dropout(model, cfg, progress):
    """dropout_schedule (start, end): every nn.Dropout's p at progress 0 -> 1 of the horizon (the lr schedule's)."""
    if cfg["dropout_schedule"]:
        start, end = cfg["dropout_schedule"]
        p = start + (end - start) * min(max(progress, 0.0), 1.0)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = p


def label_smoothed(model, logits, targets, loss, eps):
    """The model's loss with its cross-entropy term label-smoothed: loss - CE + CE_eps, on the targets the logits
    predict (the last logits.size(1) of targets, or the model's own `loss_targets` when it scores others: BERT's
    masked positions, T5's span targets). What the model adds to its cross-entropy (auxiliary losses) stays as it is."""
    if eps == 0.0 or loss is None:
        return loss
    scored = getattr(model, "loss_targets", None)
    scored = targets[:, -logits.size(1):] if scored is None else scored
    logits, scored = logits.flatten(0, 1), scored.flatten()  # cross_entropy runs in float32 under autocast
    n = scored.ne(-1).sum().clamp(min=1)  # the mean over scored targets; a batch with none adds 0, not 0/0
    ce, smoothed = (F.cross_entropy(logits, scored, ignore_index=-1, label_smoothing=e, reduction="sum") / n
                    for e in (0.0, eps))
    return loss - ce + smoothed
