"""
A study: train.py once per config, each run's log.jsonl read back, one table (bench/<study>.md) and one plot
(bench/<study>.png). The runs go one after the other, a line each with an ETA. A killed study, started again with
the same command, reuses the runs that finished: each finished run leaves study_run.json in its out_dir, naming the
command and the config file's contents it ran with, so a changed config reruns only its own run.

    python bench.py --compare a.py b.py [--out=bench/compare] [--target_loss=1.74] [--key=value ...]

compare trains a list of configs once each (the evolution study's first version); the evolution study
(common/evolution.py), the ladder and the length study (common/ladder.py) follow the same pattern: runs through
run_one, then tables and a plot.
"""

import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
import time

import torch

from common import die
from common.settings import ROOT


def run_one(configs, overrides, out_dir, label, quiet=False):
    """Train once (train.py with these config files and overrides) into out_dir, unless a finished run with the same
    command and config contents is there already; -> (run dict, whether it ran now). quiet: train.py's log is not
    shown (studies of many runs print one line per run instead)."""
    cmd = [os.path.join(ROOT, "train.py"), *configs, *overrides, f"--out_dir={out_dir}", "--sample_tokens=0"]
    key = hashlib.sha1(json.dumps([cmd[1:], [open(c).read() for c in configs]]).encode()).hexdigest()
    marker, log_path = os.path.join(out_dir, "study_run.json"), os.path.join(out_dir, "log.jsonl")
    done = os.path.isfile(marker) and os.path.isfile(log_path) and json.load(open(marker)).get("key") == key
    if not done:
        if os.path.exists(log_path):
            os.remove(log_path)
        print(f"{label}", flush=True)
        if subprocess.run([sys.executable, *cmd], stdout=subprocess.DEVNULL if quiet else None).returncode != 0:
            die(f"training {' '.join(configs + overrides)} failed (its error is above)")
        with open(marker, "w") as f:
            json.dump({"key": key, "command": cmd[1:]}, f)
    with open(log_path) as f:
        head, *log = [json.loads(line) for line in f]
    return dict(**head, log=log), not done


class Progress:
    """One line per run: what finished, and about how long the runs still to do will take."""

    def __init__(self, total):
        self.total, self.seen, self.spent = total, 0, []

    def update(self, name, run, ran, seconds):
        self.seen += 1
        self.spent += [seconds] if ran else []
        self.total = max(self.total, self.seen)  # a sweep extended past its planned runs
        left = self.total - self.seen
        eta = f", about {left * sum(self.spent) / len(self.spent) / 60:.1f} min left" if self.spent and left else ""
        last = run["log"][-1]
        print(f"[{self.seen}/{self.total}] {name}: val loss {last['val_loss']:.4f} after {last['time']:.0f} s, "
              f"{last['tokens'] / 1e6:.2f}M tokens{'' if ran else ' (finished earlier, reused)'}{eta}", flush=True)


def run_all(configs, overrides, out_root="out/compare"):
    """Train every config (plus the --key=value overrides) into out_root/<config name>; -> one dict per run with
    the log.jsonl header (model, params, tokens_per_iter, device) and its evaluations under "log"."""
    runs, progress = [], Progress(len(configs))
    for i, path in enumerate(configs):
        name = os.path.splitext(os.path.basename(path))[0]
        t0 = time.time()
        run, ran = run_one([path], overrides, os.path.join(out_root, name), f"[{i + 1}/{len(configs)}] {path}")
        progress.update(name, run, ran, time.time() - t0)
        runs.append(dict(name=name, **run))
    return runs


def markdown(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(row) + " |" for row in rows])


def write_table(path, header, rows, command, device):
    table = markdown(header, rows)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{table}\n\nCommand: `{command}`; {device}, torch {torch.__version__}, {datetime.date.today()}.\n")
    print("\n" + table + f"\n\nwrote {path}")


def pyplot():
    """matplotlib's pyplot without a display, or None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot: pip install matplotlib")
        return None
    return plt


def plot_curves(path, runs, title):
    """Val loss against training time and against tokens, one line per run."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        for ax, key in zip(axes, ("time", "tokens")):
            ax.plot([e[key] for e in r["log"]], [e["val_loss"] for e in r["log"]], marker=".", label=r["name"])
    for ax, label in zip(axes, ("training seconds (evaluation excluded)", "training tokens")):
        ax.set_xlabel(label)
        ax.set_ylabel("val loss")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def compare(argv):
    """A one-run-per-config comparison. argv: config files, then --key=value for every train.py run, plus --out=PREFIX
    and --target_loss=X (default: the worst final loss, so every model reaches it)."""
    configs = [a for a in argv if not a.startswith("--")]
    own = {"--out": "bench/compare", "--target_loss": None}
    overrides = []
    for a in argv:
        key, _, val = a.partition("=")
        if key in own:
            own[key] = val
        elif a.startswith("--"):
            overrides.append(a)
    if not configs:
        die("--compare needs config files, e.g. python bench.py --compare config/shakespeare_char.py "
            "config/llama_shakespeare_char.py")
    missing = [c for c in configs if not os.path.isfile(c)]
    if missing:
        die(f"config file {missing[0]} not found")
    runs = run_all(configs, overrides)
    target = float(own["--target_loss"]) if own["--target_loss"] else math.ceil(100 * max(
        r["log"][-1]["val_loss"] for r in runs)) / 100
    rows = []
    for r in runs:
        last = r["log"][-1]
        hit = next((e for e in r["log"] if e["val_loss"] <= target), None)
        rows.append([r["name"], r["model"], f"{r['params'] / 1e6:.2f}M", f"{last['tokens'] / max(last['time'], 1e-9):,.0f}",
                     f"{max(e['peak_mem_mb'] for e in r['log']):,.0f}", f"{last['time']:.0f}",
                     f"{last['tokens'] / 1e6:.2f}M", f"{last['val_loss']:.4f}", f"{math.exp(last['val_loss']):.2f}",
                     f"{hit['time']:.0f}" if hit else "-"])
    # No "loss at N tokens" column: with a time budget the runs anneal over time, so at equal tokens they are at
    # different points of their schedules. Per-token comparisons need runs that anneal over the same tokens.
    header = ["config", "model", "params", "tokens/s", "peak MiB", "train s", "tokens", "val loss", "val ppl",
              f"s to val {target:.2f}"]
    write_table(own["--out"] + ".md", header, rows, f"python bench.py --compare {' '.join(argv)}", runs[0]["device"])
    plot_curves(own["--out"] + ".png", runs, f"every generation on the same data and budget ({runs[0]['device']})")
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Seeds and what a difference between two rows may claim


def mean_std(xs):
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def paired_delta(child, parent):
    """child - parent over the same seeds (same initial weights' seed, same batches): mean, std, and whether the gap
    is larger than the spread, the least a claim "A beats B" needs. One seed can claim nothing."""
    m, sd = mean_std([c - p for c, p in zip(child, parent)])
    return m, sd, len(child) > 1 and abs(m) > sd


def fmt_delta(m, sd, real):
    return f"{m:+.3f} ± {sd:.3f}" + ("" if real else " (noise)")
