"""
What keeps a long run safe, as small pieces train.py calls in one line each: a clean stop on Ctrl-C or SIGTERM, a
stop with directions on a NaN/inf, and one clock and one stop decision shared by every DDP process.
"""

import os
import signal

import torch

from common import die


class StopRequest:
    """Ctrl-C / SIGTERM: finish the current step, save, exit 0. A second Ctrl-C exits at once, leaving the last
    complete checkpoint as it was (writes are atomic); a repeated SIGTERM (a scheduler and torchrun both forward one)
    does not cut the save short."""

    def __init__(self, verbose=True):
        self.requested, self.verbose = False, verbose
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)

    def on_signal(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            os._exit(130)
        if self.verbose and not self.requested:
            print("\nstopping after this step (press Ctrl-C again to quit without saving)", flush=True)
        self.requested = True


def agree(stop, train_time, device):
    """Under DDP every process must stop at the same step and follow the same schedule, so they share the slowest
    process's clock and anyone's stop request (one MAX all-reduce per step). -> (stop requested, training time)."""
    if not torch.distributed.is_initialized():
        return stop.requested, train_time
    flags = torch.tensor([float(stop.requested), train_time], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    stop.requested = bool(flags[0].item())
    return stop.requested, flags[1].item()


def stop_nonfinite(what, fix, ckpt_path, saved_iter):
    """NaN or inf: stop before anything overwrites the last good checkpoint, and say how to go on."""
    where = (f"the last good checkpoint, {ckpt_path} (iter {saved_iter}), is intact: --resume from it with"
             if saved_iter is not None else "no checkpoint was written yet: restart with")
    die(f"{what}; {where} {fix}")


def weights_finite(tensors):
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
