"""
What train.py, sample.py, bench.py and prepare/ share, one concern per file. Nothing here knows any particular model:
model files are reached only through the interface in README.md ("The model interface").

    settings.py     settings from config files and --key=value; loading a model file by name
    data.py         token bins and their meta.json, batches, tokenizers
    checkpoints.py  atomic writes, checkpoints, loading weights into a model
    devices.py      devices, dtypes and autocast, GPU peak FLOP/s, memory
    guards.py       what keeps a long run safe: Ctrl-C/SIGTERM, non-finite losses, one clock for all processes
    study.py        a study: train.py over several configs, the logs turned into a table and a plot, resumable
    ladder.py       the studies on models/lab.py: the ablation ladder and the length study
    optim.py        optimizers, the one parameter-group rule, learning-rate schedules
    lion.py         Lion (Chen et al. 2023); sophia.py: Sophia-G (Liu et al. 2023)
    recipe.py       label smoothing, the dropout schedule, the curriculum (sequence-length and batch-size warmup)
    fsdp.py         FSDP2 sharding under torchrun; checkpoints gathered into the one plain format
    scaling.py      the compute-optimal sweep: iso-FLOP profiles and the parametric law L(N, D)

die() is here: every user mistake, in every script, ends in the same single line.
"""

import sys


def die(msg):
    """A user mistake: one line that says what to do, no traceback, non-zero exit."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)
