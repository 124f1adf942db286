"""
The two studies on models/lab.py's design space (README "What each idea buys" and "How far each position scheme
reaches"). A folder holds the recipe every row shares (base.py) and one config per row, each naming its parent.

    python bench.py --ladder config/ladder [--quick] [--rows=a,b]   # each idea against its parent, seeds, 2 protocols
    python bench.py --length config/length [--quick] [--rows=a,b]   # train at block_size, evaluate at 1x .. 16x

Each row's runs go to out/<folder name>/<row>/<run>. Both studies use common/study.py's runner, so a killed study
started again reuses every run that finished.
"""

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import die
from common.study import Progress, fmt_delta, mean_std, paired_delta, plot_curves, pyplot, run_one, write_table

LADDER = dict(full=dict(tokens_iters=600, seconds=10.0, sweep_iters=200, seeds=3, lr_mults=(0.5, 1.0, 2.0)),
              quick=dict(tokens_iters=20, seconds=2.0, sweep_iters=10, seeds=2, lr_mults=(1.0, 2.0)))
LENGTH = dict(full=dict(iters=2000, seeds=3, mults=(1, 2, 4, 8, 16)), quick=dict(iters=20, seeds=2, mults=(1, 2, 4)))


def row_info(path):
    """A row's parent (its `_parent`), what it changes (its first comment line), the published claim it tests
    (its `_claim`, or None) and the table it belongs to (its `_table`, or None: the main one)."""
    scope = {}
    exec(compile(open(path).read(), path, "exec"), scope)
    first = open(path).readline().lstrip("# ").strip()
    return scope.get("_parent"), first, scope.get("_claim"), scope.get("_table")


def read_folder(argv, flag, own):
    """argv: FOLDER, then the study's own --keys (filled into `own`) and --key=value for every run. -> the rows in
    order (every row after its parent), their paths, their (parent, change), base.py and the run overrides."""
    folder = next((a for a in argv if not a.startswith("--")), None)
    if folder is None or not os.path.isfile(os.path.join(folder, "base.py")):
        die(f"{flag} needs a folder holding base.py and one config per row, e.g. python bench.py {flag} config/ladder")
    overrides = []
    for a in argv[1:]:
        key, eq, val = a.partition("=")
        if key in own:
            own[key] = val if eq else "True"
        elif a.startswith("--"):
            overrides.append(a)
    base = os.path.join(folder, "base.py")
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py") and f != "base.py")
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if own["--rows"]:
        wanted = own["--rows"].split(",")
        unknown = [w for w in wanted if w not in names]
        if unknown:
            die(f"--rows: no row {unknown[0]!r} in {folder} (have: {', '.join(names)})")
        paths, names = [p for p, n in zip(paths, names) if n in wanted], [n for n in names if n in wanted]
    info = {n: row_info(p) for n, p in zip(names, paths)}
    order = []  # every row after its parent: the ladder's rungs in order, then the side branches
    while len(order) < len(names):
        order.append(next(n for n in names if n not in order and (info[n][0] not in names or info[n][0] in order)))
    return order, [paths[names.index(n)] for n in order], info, base, overrides


def out_root(base):
    return os.path.join("out", os.path.basename(os.path.dirname(os.path.abspath(base))))


def runner(base, overrides, progress):
    """train(path, name, tag, extra): one run of row `name` into out/<folder>/<name>/<tag>, reused when finished."""

    def train(path, name, tag, extra):
        t0 = time.time()
        run, ran = run_one([base, path], overrides + extra, os.path.join(out_root(base), name, tag), f"{name} {tag}",
                           quiet=True)
        progress.update(f"{name} {tag}", run, ran, time.time() - t0)
        return run

    return train


def best_lr(train, path, name, lr0, budget, run_at=None):
    """The row's learning rate: a short run per multiplier of lr0 (one seed), the best final val loss wins. With
    budget["extend"] = k, a best at the edge of the sweep extends it that way by the same step, up to k more runs,
    so that the winner has a worse rate on each side (the ladder's --extend=k). run_at(lr) -> run replaces the short
    run (the evolution study sweeps with its first seed's full equal-tokens runs). budget["tol"] > 0: every rate
    within tol of the best loss counts as a tie, and of those the one nearest lr0 (then the smaller) wins: one seed
    cannot rank rates that close, and the rate next to a cliff is the one another seed falls off."""
    n, sweep, tol = budget["sweep_iters"], {}, budget.get("tol", 0.0)

    def pick():
        low = min(sweep.values())
        return min((lr for lr, v in sweep.items() if v <= low + tol), key=lambda lr: (abs(math.log(lr / lr0)), lr))

    def point(lr):
        run = run_at(lr) if run_at else train(path, name, f"lr{lr:g}", [
            f"--max_iters={n}", f"--lr_decay_iters={n}", f"--learning_rate={lr}", f"--min_lr={lr / 10}",
            f"--eval_interval={n}"])
        sweep[lr] = run["log"][-1]["val_loss"]

    mults = sorted(budget["lr_mults"])
    for m in mults:
        point(lr0 * m)
    step = mults[-1] / mults[-2] if len(mults) > 1 else 1.0
    for _ in range(budget.get("extend", 0) if step > 1 else 0):
        lrs, best = sorted(sweep), pick()
        if best not in (lrs[0], lrs[-1]):
            break
        point(best * step if best == lrs[-1] else best / step)
    return pick(), sweep


def base_lr(base, path):
    """The centre of a row's sweep: its own learning_rate, else base.py's."""
    from common.settings import read_settings

    return float(read_settings([base, path]).get("learning_rate", 1e-3))


def study_budget(base, quick):
    """The full budget with base.py's `_budget` dict over it (the optimizer study runs longer); --quick is fixed."""
    if quick:
        return LADDER["quick"]
    scope = {}
    exec(compile(open(base).read(), base, "exec"), scope)
    return {**LADDER["full"], **scope.get("_budget", {})}


def steps_to(runs, target):
    """Per run, the first evaluated iteration whose val loss is at or below target (None if never): how many steps a
    row needs to reach its parent's final loss. Read off a run that anneals over the whole budget, so mid-run points
    are taken at a higher lr than a run ending there would have: a conservative count."""
    return [next((e["iter"] for e in run["log"][1:] if "val_loss" in e and e["val_loss"] <= target), None)
            for run in runs]


def train_rows(names, paths, base, budget, seeds, train):
    """Per row: its learning rate (best_lr), then per seed two runs that each anneal fully, one over
    budget["tokens_iters"] steps (equal tokens) and one over budget["seconds"] of training (equal wall-clock).
    budget["sweep_iters"] = None: the sweep's runs are the first seed's equal-tokens runs, so the rate is tuned at the
    study's own budget and the winner's run is reused. -> {row: dict(lr, sweep, tokens=[run per seed], time=[...])}"""
    rows = {}
    for name, path in zip(names, paths):
        n, secs = budget["tokens_iters"], budget["seconds"]
        shared = budget["sweep_iters"] is None

        def tokens(lr, s):
            return train(path, name, f"tokens_s{s}" + (f"_lr{lr:g}" if shared else ""), [
                f"--learning_rate={lr}", f"--min_lr={lr / 10}", f"--seed={s}", f"--max_iters={n}",
                f"--lr_decay_iters={n}"])

        lr, sweep = best_lr(train, path, name, base_lr(base, path), budget,
                            run_at=(lambda lr: tokens(lr, seeds[0])) if shared else None)
        tok = [tokens(lr, s) for s in seeds]
        tim = [train(path, name, f"time_s{s}", [f"--learning_rate={lr}", f"--min_lr={lr / 10}", f"--seed={s}",
                                                f"--max_seconds={secs}", "--max_iters=1000000000"]) for s in seeds]
        rows[name] = dict(lr=lr, sweep=sweep, tokens=tok, time=tim)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The ablation ladder: one idea at a time, each row against its parent, over seeds, at equal time and equal tokens


def ladder(argv):
    """python bench.py --ladder FOLDER [--quick] [--rows=a,b] [--extend=k] [--out=bench/ladder] [--key=value ...]
    FOLDER/base.py is the shared recipe; every other .py file in FOLDER is a row. Per row: a learning-rate sweep
    (budget x lr multipliers, one seed, the best final val loss wins), then per seed two runs that each anneal fully:
    one over a token budget (equal tokens) and one over a time budget (equal wall-clock)."""
    own = {"--out": "bench/ladder", "--rows": None, "--quick": None, "--extend": "0"}
    names, paths, info, base, overrides = read_folder(argv, "--ladder", own)
    budget = {**study_budget(base, own["--quick"] not in (None, "False")), "extend": int(own["--extend"])}
    seeds = [1337 + i for i in range(budget["seeds"])]
    train = runner(base, overrides, Progress(len(paths) * (len(budget["lr_mults"]) + 2 * len(seeds))))

    rows = train_rows(names, paths, base, budget, seeds, train)

    claims = any(info[n][2] for n in names)  # a study of published claims: two more columns and the curves
    table, plot = [], []
    for name in names:
        r, (parent, change, claim, _) = rows[name], info[name]
        val = {p: [run["log"][-1]["val_loss"] for run in r[p]] for p in ("time", "tokens")}
        deltas = {}
        for p in ("time", "tokens"):
            if parent in rows:
                deltas[p] = paired_delta(val[p], [run["log"][-1]["val_loss"] for run in rows[parent][p]])
        speed = mean_std([run["log"][-1]["tokens"] / max(run["log"][-1]["time"], 1e-9) for run in r["time"]])[0]
        mem = max(e["peak_mem_mb"] for run in r["time"] for e in run["log"])
        cells = [name, parent or "-", change, f"{r['time'][0]['params'] / 1e6:.3f}M", f"{speed:,.0f}", f"{mem:,.0f}",
                 f"{r['lr']:g}"]
        for p in ("time", "tokens"):
            m, sd = mean_std(val[p])
            cells += [f"{m:.4f} ± {sd:.4f}", fmt_delta(*deltas[p]) if p in deltas else "-"]
        if claims:
            reach = "-"
            if parent in rows:  # steps to the parent's final loss (mean over its seeds), at equal steps
                n = budget["tokens_iters"]
                steps = steps_to(r["tokens"], mean_std([u["log"][-1]["val_loss"] for u in rows[parent]["tokens"]])[0])
                reach = (f"{mean_std(steps)[0]:,.0f} ({n / mean_std(steps)[0]:.2f}x fewer)" if None not in steps else
                         f"not reached in {n} ({sum(s is not None for s in steps)}/{len(steps)} seeds)")
            cells += [reach, claim or "-"]
        table.append(cells)
        plot.append((name, deltas))
    header = ["row", "parent", "change", "params", "tokens/s", "peak MiB", "lr", f"val loss, {budget['seconds']:g} s",
              "Δ vs parent (time)", f"val loss, {budget['tokens_iters']} steps", "Δ vs parent (tokens)"]
    header += ["steps to the parent's final loss", "published claim"] if claims else []
    device = rows[names[0]]["time"][0]["device"]
    write_table(own["--out"] + ".md", header, table, f"python bench.py --ladder {' '.join(argv)}",
                f"{device}, {len(seeds)} seed(s), mean ± std; '(noise)': the gap is not larger than the spread")
    plot_deltas(own["--out"] + ".png", plot, device)
    if claims:  # the first seed's equal-steps run of each row: its loss against steps and against its own time
        plot_curves(own["--out"] + "_curves.png", [dict(name=n, log=rows[n]["tokens"][0]["log"]) for n in names],
                    f"val loss, {budget['tokens_iters']} steps each ({device})")
    return table


def plot_deltas(path, rows, device):
    """Each row's val-loss change against its parent, mean ± std over seeds, at equal time and at equal tokens."""
    plt = pyplot()
    if plt is None:
        return
    rows = [(n, d) for n, d in rows if d]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.4 * len(rows) + 1.5), sharey=True)
    for ax, p in zip(axes, ("time", "tokens")):
        ax.barh(range(len(rows)), [d[p][0] for _, d in rows], xerr=[d[p][1] for _, d in rows],
                color=["tab:blue" if d[p][2] else "tab:gray" for _, d in rows])
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"equal {'wall-clock' if p == 'time' else 'tokens'}: val loss change vs parent")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(rows)), [n for n, _ in rows])
    axes[0].invert_yaxis()
    fig.suptitle(f"what each idea buys (grey: inside the seed spread; {device})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------------------------------------------
# The length study: train short, test long (Press et al. 2022)


@torch.no_grad()
def window_losses(ckpt_path, mults, max_tokens_per_batch=16384):
    """Val loss of a trained checkpoint at evaluation lengths L = mult x block_size: the val split (the same tokens
    for every L: a multiple of the longest window) cut into non-overlapping windows of L, each read from scratch.
    -> {mult: (loss over the whole window, loss on the positions past block_size or None at 1x)}, or for a mult the
    model cannot run, the one-line reason (learned positions end at block_size)."""
    from common.checkpoints import load_checkpoint, load_weights
    from common.data import load_meta, open_bin
    from common.settings import build_model, load_model_module

    ckpt = load_checkpoint(ckpt_path)
    model = build_model(load_model_module(ckpt["model_name"]), ckpt["model_config"])
    load_weights(model, ckpt, ckpt_path, ckpt["model_name"])
    model.eval()
    block, dataset = model.config.block_size, ckpt["config"]["dataset"]
    data_dir = os.path.join("data", dataset)
    longest = block * max(mults)
    val = open_bin(data_dir, "val", longest, load_meta(data_dir, dataset, auto_prepare=False)["vocab_size"])
    n = (len(val) - 1) // longest * longest
    x = torch.from_numpy(val[:n].astype(np.int64))
    y = torch.from_numpy(val[1:n + 1].astype(np.int64))
    out = {}
    for m in mults:
        L = block * m
        xs, ys = x.view(-1, L), y.view(-1, L)  # (n / L, L)
        nll = torch.empty(ys.shape)
        step = max(1, max_tokens_per_batch // L)
        try:
            for i in range(0, len(xs), step):
                logits, _ = model(xs[i:i + step])  # (b, L, V)
                nll[i:i + step] = F.cross_entropy(logits.float().transpose(1, 2), ys[i:i + step], reduction="none")
        except ValueError as e:
            out[m] = str(e).split(":")[-1].strip()
            continue
        out[m] = (nll.mean().item(), nll[:, block:].mean().item() if L > block else None)
    return out


def length(argv):
    """python bench.py --length FOLDER [--quick] [--rows=a,b] [--mults=1,2,4,8,16] [--out=bench/length] [--key=value]
    Each row is trained at the base's block_size with the learning rate its sweep chose (as in the ladder), per
    seed over one token budget that anneals fully; each checkpoint is then evaluated at
    mult x block_size: the loss over the whole window (what Press et al. report) and the loss on the positions
    past the training length alone (where extrapolation shows, undiluted by the first block_size positions)."""
    own = {"--out": "bench/length", "--rows": None, "--quick": None, "--mults": None}
    names, paths, info, base, overrides = read_folder(argv, "--length", own)
    quick = own["--quick"] not in (None, "False")
    budget, sweep_budget = LENGTH["quick" if quick else "full"], LADDER["quick" if quick else "full"]
    try:
        mults = sorted({int(v) for v in own["--mults"].split(",")}) if own["--mults"] else list(budget["mults"])
    except ValueError:
        mults = []
    if not mults or mults[0] < 1:
        die(f"--mults={own['--mults']}: give whole multiples of block_size, e.g. --mults=1,2,4,8,16")
    seeds = [1337 + i for i in range(budget["seeds"])]
    train = runner(base, overrides, Progress(len(paths) * (len(sweep_budget["lr_mults"]) + len(seeds))))

    results, params, device = {}, {}, None
    for name, path in zip(names, paths):
        lr, _ = best_lr(train, path, name, base_lr(base, path), sweep_budget)
        n = budget["iters"]
        runs = [train(path, name, f"length_s{s}", [f"--learning_rate={lr}", f"--min_lr={lr / 10}", f"--seed={s}",
                                                   f"--max_iters={n}", f"--lr_decay_iters={n}", f"--eval_interval={n}"])
                for s in seeds]
        params[name], device = runs[0]["params"], runs[0]["device"]
        results[name] = [window_losses(os.path.join(out_root(base), name, f"length_s{s}", "ckpt.pt"), mults)
                         for s in seeds]
        print(f"{name}: evaluated at {', '.join(f'{m}x' for m in mults)} block_size", flush=True)

    def cell(name, m, k):
        vals = [r[m] for r in results[name]]
        if isinstance(vals[0], str):
            return "cannot" if k == 0 else "-"
        xs = [v[k] for v in vals]
        if xs[0] is None:
            return "-"
        mean, sd = mean_std(xs)
        return f"{mean:.3f} ± {sd:.3f}" if math.isfinite(mean) else "inf"

    table = []
    for name in names:
        row = [name, info[name][1], f"{params[name] / 1e6:.3f}M"]
        for m in mults:
            row += [cell(name, m, 0)] + ([cell(name, m, 1)] if m > 1 else [])
        table.append(row)
    header = ["row", "change", "params"]
    for m in mults:
        header += [f"{m}x whole"] + ([f"{m}x past"] if m > 1 else [])
    reasons = sorted({v for name in names for r in results[name] for v in r.values() if isinstance(v, str)})
    note = (f"{device}, {len(seeds)} seed(s), mean ± std of val loss (nats/token); 'whole': every position of the "
            f"window; 'past': the positions whose context is longer than the training block" +
            (f"; cannot: {'; '.join(reasons)}" if reasons else ""))
    write_table(own["--out"] + ".md", header, table, f"python bench.py --length {' '.join(argv)}", note)
    plot_length(own["--out"] + ".png", names, results, mults, device)
    return table


def plot_length(path, names, results, mults, device):
    """Val loss against evaluation length (in multiples of the training block), whole window and past it."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, ax in enumerate(axes):
        for i, name in enumerate(names):  # one colour per row in both panels, drawn or not
            pts = [(m, mean_std([r[m][k] for r in results[name]])) for m in mults
                   if not isinstance(results[name][0][m], str) and results[name][0][m][k] is not None]
            if pts:
                ax.errorbar([m for m, _ in pts], [s[0] for _, s in pts], yerr=[s[1] for _, s in pts], marker="o",
                            capsize=3, label=name, color=f"C{i}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("evaluation length / training length")
        ax.set_ylabel("val loss" + (" (positions past the training length)" if k else " (whole window)"))
        ax.grid(alpha=0.3)
        ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"train short, test long: each position scheme trained at one length ({device})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
