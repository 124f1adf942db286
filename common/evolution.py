"""
The evolution study (README "Results"): every generation on one corpus, each at its own swept learning rate, over
seeds, in two protocols whose runs each anneal fully: equal tokens (the per-token comparison the papers make) and
equal wall-clock. A folder is one corpus: base.py holds the data, the recipe every row shares and the study's
`_budget`; every other file is one generation with `_parent` (its predecessor) and `_claim` (what its paper claimed
against it). A row with `_table` goes to a table of its own (BERT: a masked-LM loss does not compare with causal ones).

    python bench.py --evolution config/evolution [--quick] [--rows=a,b] [--extend=1] [--tol=0.01] [--out=...]

Per row: the learning-rate sweep is the first seed's equal-tokens run at each multiplier of the row's own
learning_rate (so the rate is tuned at the study's budget, and the winner's run is one of the seeds). Rates within
--tol nats of the best tie, and the tie goes to the rate nearest the row's own (one seed cannot rank them). A winner
at the sweep's edge extends it that way, up to --extend more points. Then the other seeds at the chosen rate, then
one equal-time run per seed. Runs go to out/<folder>/<row>/<run> through common/study.py's
run_one: a killed study resumes, and a changed config reruns only its own cells. Writes <out>.md (tables, sweeps,
claims), <out>.json (every final loss) and <out>.png (loss against time and against tokens).
"""

import json
import math
import os

import numpy as np

from common import die
from common.data import load_meta
from common.ladder import read_folder, runner, study_budget, train_rows
from common.settings import read_settings
from common.study import Progress, fmt_delta, markdown, mean_std, paired_delta, pyplot

LN2 = math.log(2)


def bytes_per_token(dataset):
    """Mean UTF-8 bytes per token of a dataset's val split: bits per byte = loss / ln 2 / bytes_per_token, which
    compares across tokenizers (a character is 1 byte in ASCII text; a GPT-2 token about 4)."""
    data_dir = os.path.join("data", dataset)
    meta = load_meta(data_dir, dataset, auto_prepare=False)
    if meta["tokenizer"] == "char":
        sizes = [len(c.encode()) for c in meta["chars"]]
    else:
        import tiktoken

        enc = tiktoken.get_encoding("gpt2")
        sizes = [len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
    val = np.memmap(os.path.join(data_dir, "val.bin"), dtype=np.uint16, mode="r")
    counts = np.bincount(val, minlength=len(sizes))
    return float(counts[:len(sizes)] @ np.array(sizes, dtype=np.float64)) / len(val)


def final(runs):
    return [run["log"][-1]["val_loss"] for run in runs]


def summarize(rows, names, info):
    """Per row: final val losses per seed in each protocol, their mean ± std, and the paired change against the
    parent (same seeds: same initial-weights seed, batches and evaluation batches) with its noise flag."""
    out = {}
    for name in names:
        r, parent = rows[name], info[name][0]
        s = dict(lr=r["lr"], sweep=r["sweep"], params=r["tokens"][0]["params"],
                 flops_per_token=r["tokens"][0].get("flops_per_token"),
                 tokens_per_s=mean_std([u["log"][-1]["tokens"] / max(u["log"][-1]["time"], 1e-9) for u in r["time"]]),
                 time_tokens=mean_std([u["log"][-1]["tokens"] for u in r["time"]]))
        for p in ("tokens", "time"):
            s[p] = final(r[p])
            s[p + "_mean"] = mean_std(s[p])
            if parent in rows and info[parent][3] == info[name][3]:
                s[p + "_delta"] = paired_delta(s[p], final(rows[parent][p]))
        out[name] = s
    return out


def edge(sweep, lr):
    """'*' when the chosen rate is the sweep's smallest or largest: the best may lie beyond it."""
    return "*" if len(sweep) > 1 and lr in (min(sweep), max(sweep)) else ""


def table_rows(names, info, stats, bpt):
    rows = []
    for name in names:
        s, parent = stats[name], info[name][0]
        cells = [name, parent or "-", f"{s['params'] / 1e6:.3f}M",
                 f"{s['flops_per_token'] / 1e6:.2f}" if s["flops_per_token"] else "-",
                 f"{s['tokens_per_s'][0]:,.0f}", f"{s['lr']:g}{edge(s['sweep'], s['lr'])}"]
        m, sd = s["tokens_mean"]
        cells += [f"{m:.4f} ± {sd:.4f}", f"{m / LN2 / bpt:.3f}" if bpt else "-",
                  fmt_delta(*s["tokens_delta"]) if "tokens_delta" in s else "-"]
        m, sd = s["time_mean"]
        cells += [f"{m:.4f} ± {sd:.4f}", f"{s['time_tokens'][0] / 1e6:.2f}M",
                  fmt_delta(*s["time_delta"]) if "time_delta" in s else "-"]
        rows.append(cells)
    return rows


def evolution(argv):
    """python bench.py --evolution FOLDER [--quick] [--rows=a,b] [--extend=1] [--out=bench/<folder>] [--key=value]"""
    own = {"--out": None, "--rows": None, "--quick": None, "--extend": "1", "--tol": "0.01"}
    names, paths, info, base, overrides = read_folder(argv, "--evolution", own)
    quick = own["--quick"] not in (None, "False")
    if not own["--extend"].isdigit():
        die(f"--extend={own['--extend']}: give how many points a sweep may add past its edge, e.g. --extend=1")
    try:
        tol = float(own["--tol"])
    except ValueError:
        tol = -1.0
    if not tol >= 0:
        die(f"--tol={own['--tol']}: give the loss gap (nats) below which two rates tie, e.g. --tol=0.01")
    budget = {**study_budget(base, quick), "sweep_iters": None, "extend": 0 if quick else int(own["--extend"]),
              "tol": tol}
    out = own["--out"] or os.path.join("bench", os.path.basename(os.path.dirname(os.path.abspath(base))))
    seeds = [1337 + i for i in range(budget["seeds"])]
    per_row = len(budget["lr_mults"]) + 2 * len(seeds)  # the sweep's winner is counted again, as reused (an
    # extended sweep adds to the total as it goes)
    train = runner(base, overrides, Progress(len(paths) * per_row))
    rows = train_rows(names, paths, base, budget, seeds, train)
    stats = summarize(rows, names, info)

    settings = read_settings([base, *[a for a in overrides if a.startswith("--dataset=")]])
    dataset = str(settings.get("dataset"))
    bpt = bytes_per_token(dataset)
    first = rows[names[0]]["tokens"][0]
    device, n_tok = first["device"], budget["tokens_iters"] * first["tokens_per_iter"]
    command = f"python bench.py --evolution {' '.join(argv)}"
    main = [n for n in names if info[n][3] is None]
    header = ["generation", "parent", "params", "MFLOPs/token", "tokens/s", "lr",
              f"val loss, {n_tok / 1e6:g}M tokens", "bits/byte", "Δ vs parent (tokens)",
              f"val loss, {budget['seconds']:g} s", "tokens in the time", "Δ vs parent (time)"]
    parts = [f"# {dataset}: {len(seeds)} seed(s), mean ± std of the final val loss (nats/token)\n",
             markdown(header, table_rows(main, info, stats, bpt))]
    for table in sorted({info[n][3] for n in names} - {None}):
        rows_t = [n for n in names if info[n][3] == table]
        parts += [f"\n{table}: a loss of its own, not comparable with the table above\n",
                  markdown(header, table_rows(rows_t, info, stats, None))]
    parts.append("\nLearning-rate sweeps (the first seed's equal-tokens run at each rate; final val loss; the chosen "
                 f"rate in bold: the best, or of the rates within {tol:g} of it the nearest to the row's own; * in the "
                 f"tables: the chosen rate is at the sweep's edge even after up to {budget['extend']} more point(s) "
                 "that way):\n")
    parts += [f"- {n}: " + ", ".join(f"**{lr:g}: {v:.4f}**" if lr == stats[n]["lr"] else f"{lr:g}: {v:.4f}"
                                     for lr, v in sorted(stats[n]["sweep"].items())) for n in names]
    claims = [n for n in names if info[n][2]]
    if claims:
        parts.append("\nWhat each paper claimed against its predecessor, and the paired change here (child - parent, "
                     "same seeds; '(noise)': not larger than the spread):\n")
        for n in claims:
            s = stats[n]
            here = "; ".join(f"equal {p}: {fmt_delta(*s[p + '_delta'])}" for p in ("tokens", "time")
                             if p + "_delta" in s) or "no parent in this study"
            parts.append(f"- {n} vs {info[n][0] or '-'}: {info[n][2]} Here: {here}.")
    note = (f"\nCommand: `{command}`; {device}; {len(seeds)} seeds; equal tokens: {budget['tokens_iters']} steps of "
            f"{first['tokens_per_iter']:,} tokens; equal time: {budget['seconds']:g} s of training each; bits/byte: "
            f"val loss / ln 2 / {bpt:.4f} bytes per token of the val split. MFLOPs/token: flops_per_token(), training "
            f"(forward + backward).\n")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write("\n".join(parts) + "\n" + note)
    with open(out + ".json", "w") as f:
        json.dump(dict(command=command, device=device, seeds=seeds, budget=budget, bytes_per_token=bpt,
                       rows={n: dict(parent=info[n][0], table=info[n][3], lr=stats[n]["lr"],
                                     sweep={f"{k:g}": v for k, v in stats[n]["sweep"].items()},
                                     params=stats[n]["params"], flops_per_token=stats[n]["flops_per_token"],
                                     tokens=stats[n]["tokens"], time=stats[n]["time"],
                                     tokens_per_s=stats[n]["tokens_per_s"][0], time_tokens=stats[n]["time_tokens"][0])
                             for n in names}), f, indent=1)
    print("\n".join(parts) + "\n" + note + f"\nwrote {out}.md and {out}.json")
    plot_evolution(out + ".png", main, rows, f"{dataset}, {len(seeds)} seeds ({device})")
    return stats


def plot_evolution(path, names, rows, title):
    """Val loss against training seconds (equal-time runs) and against tokens (equal-tokens runs), log x; each line
    the mean over seeds at each evaluation."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for i, name in enumerate(names):
        for ax, p, key in zip(axes, ("time", "tokens"), ("time", "tokens")):
            logs = [run["log"] for run in rows[name][p]]
            n = min(len(log) for log in logs)
            xs = [sum(log[k][key] for log in logs) / len(logs) for k in range(n)]
            ys = [sum(log[k]["val_loss"] for log in logs) / len(logs) for k in range(n)]
            pts = [(x, y) for x, y in zip(xs, ys) if x > 0]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker=".", label=name, color=f"C{i}")
    for ax, label in zip(axes, ("training seconds (equal-time runs)", "training tokens (equal-tokens runs)")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("val loss (mean over seeds)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.suptitle(f"every generation: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
