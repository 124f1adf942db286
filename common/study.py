"""
A study: train.py once per config, each run's log.jsonl read back, one table (bench/<study>.md) and one plot
(bench/<study>.png). The runs go one after the other, a line each with an ETA. A killed study, started again with
the same command, reuses the runs that finished: each finished run leaves study_run.json in its out_dir, naming the
command and the config file's contents it ran with, so a changed config reruns only its own run.

    python bench.py --compare config/evolution/*.py [--out=bench/evolution] [--target_loss=1.74] [--key=value ...]

The evolution comparison (compare) is the first study; the others follow the same pattern: run_all, then a table.
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


def run_all(configs, overrides, out_root="out/compare"):
    """Train every config (plus the --key=value overrides) into out_root/<config name>; -> one dict per run with
    the log.jsonl header (model, params, tokens_per_iter, device) and its evaluations under "log"."""
    runs, spent = [], []
    for i, path in enumerate(configs):
        name = os.path.splitext(os.path.basename(path))[0]
        out_dir = os.path.join(out_root, name)
        cmd = [os.path.join(ROOT, "train.py"), path, *overrides, f"--out_dir={out_dir}", "--sample_tokens=0"]
        key = hashlib.sha1(json.dumps([cmd[1:], open(path).read()]).encode()).hexdigest()
        marker, log_path = os.path.join(out_dir, "study_run.json"), os.path.join(out_dir, "log.jsonl")
        done = os.path.isfile(marker) and os.path.isfile(log_path) and json.load(open(marker)).get("key") == key
        if not done:
            if os.path.exists(log_path):
                os.remove(log_path)
            t0 = time.time()
            print(f"[{i + 1}/{len(configs)}] {path}", flush=True)
            if subprocess.run([sys.executable, *cmd]).returncode != 0:
                die(f"training {path} failed (its error is above)")
            spent.append(time.time() - t0)
            with open(marker, "w") as f:
                json.dump({"key": key, "command": cmd[1:]}, f)
        with open(log_path) as f:
            head, *log = [json.loads(line) for line in f]
        runs.append(dict(name=name, **head, log=log))
        left = len(configs) - i - 1
        eta = f", about {left * sum(spent) / len(spent) / 60:.1f} min left" if spent and left else ""
        print(f"[{i + 1}/{len(configs)}] {name}: val loss {log[-1]['val_loss']:.4f} after {log[-1]['time']:.0f} s "
              f"of training{' (finished earlier, reused)' if done else ''}{eta}", flush=True)
    return runs


def write_table(path, header, rows, command, device):
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                      ["| " + " | ".join(row) + " |" for row in rows])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{table}\n\nCommand: `{command}`; {device}, torch {torch.__version__}, {datetime.date.today()}.\n")
    print("\n" + table + f"\n\nwrote {path}")


def plot_curves(path, runs, title):
    """Val loss against training time and against tokens, one line per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot: pip install matplotlib")
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
    """The evolution comparison. argv: config files, then --key=value for every train.py run, plus --out=PREFIX
    and --target_loss=X (default: the worst final loss, so every model reaches it)."""
    configs = [a for a in argv if not a.startswith("--")]
    own = {"--out": "bench/evolution", "--target_loss": None}
    overrides = []
    for a in argv:
        key, _, val = a.partition("=")
        if key in own:
            own[key] = val
        elif a.startswith("--"):
            overrides.append(a)
    if not configs:
        die("--compare needs config files, e.g. python bench.py --compare config/evolution/*.py")
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
