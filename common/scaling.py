"""
Compute-optimal scaling (Hoffmann et al. 2022, "Chinchilla"): for one generation, a few compute budgets C and, per
budget, 5-7 model sizes; every run anneals over its own token budget D = C / flops_per_token. Then the two fits of
the paper: iso-FLOP profiles (Approach 2) and the parametric law L(N, D) = E + A/N^alpha + B/D^beta (Approach 3),
with bootstrap intervals over runs, against the paper's and Kaplan et al. 2020's values.

    python bench.py --scaling [--model=llama] [--quick] [--budgets=8e11,1.6e12,3.2e12,6.4e12] [--depths=1,2,3,4,5]
                    [--out=bench/scaling_<model>] [--boot=200] [--lr_width_exp=0] [--key=value for every run]

What is fixed (README "Compute-optimal scaling"):
- Sizes: depth d and width w = WIDTH * d together (nanochat's rule at a CPU's scale), with the Config fields each
  model file has set from SIZE_RULES (keyed by field name, never by model name): heads of HEAD channels,
  multi-head attention at every size, a SwiGLU hidden size of 8/3 w (rounded to 32).
- Tokens: D = C / flops_per_token(), the model file's own count of training FLOPs per token (6N plus attention or
  the scan), rounded to whole batches. N = non-embedding parameters (Kaplan): every parameter but those of
  nn.Embedding modules and a head shaped like the token table. Every run also records the total count (Chinchilla's
  N), and both fits are reported for both.
- Recipe: RECIPE below (Gutenberg characters, block 128, batch 8, AdamW); cosine from the learning rate to a tenth
  of it, ending at the run's last step, warmup WARMUP_FRAC of the steps. The learning rate: the best of a short
  sweep (lrs, continued past an edge) at the middle size and the smallest budget, run first; the same at every size
  unless --lr_width_exp=p scales it by (sweep width / width)^p (1: Adam's muP rule for hidden matrices).
  --learning_rate=X skips the sweep. The smallest budget, because there a rate too high costs most: a short run
  stalls on the unigram plateau (+0.3 nats), while a rate 2x too low costs a long run ~0.01-0.04.
Each run is a train.py run through common/study.py's run_one (out/scaling_<model>[_quick]/<run>), so a killed
sweep started again reuses every finished run; each finished run is a line in bench/scaling_<model>.jsonl, with its
train.py arguments, and a sweep whose out/ folder is gone reuses the lines whose arguments match.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np

from common import die
from common.study import Progress, pyplot, run_one

WIDTH = 32  # n_embd (or d_model) = WIDTH * depth
HEAD = 32  # channels per attention head (and Mamba-2's head_dim P)

# The size of a model at depth d and width w, per Config field; a field the model's Config lacks is skipped. Every
# model needs a depth field (n_layer) and one width field (n_embd or d_model).
SIZE_RULES = (
    ("n_layer", lambda d, w: d),
    ("n_embd", lambda d, w: w),
    ("d_model", lambda d, w: w),
    ("n_head", lambda d, w: max(1, w // HEAD)),
    ("n_kv_head", lambda d, w: max(1, w // HEAD)),  # multi-head at every size: a GQA ratio breaks at one head
    ("head_dim", lambda d, w: HEAD),  # Mamba-2's P
    ("ffn_hidden", lambda d, w: 32 * math.ceil(8 * w / 3 / 32)),  # SwiGLU's equal-parameter 8/3 w (llama's own
    #                                                                rule rounds up to 256: 8w at w = 32)
)

MODEL = "llama"  # the generation swept unless --model= says otherwise
# The training recipe every run shares (train.py settings, and Config fields where the model has them); --key=value
# on the command line adds to it.
RECIPE = dict(dataset="gutenberg_char", block_size=128, batch_size=8, optimizer="adamw", beta2=0.95,
              weight_decay=0.1, grad_clip=1.0, dropout=0.0, schedule="cosine", seed=1337)
PREPARE = {"gutenberg": "python prepare/gutenberg.py --input ../shared/data/gutenberg",  # made by prepare/gutenberg.py
           "gutenberg_char": "python prepare/gutenberg.py --tokenizer char --input ../shared/data/gutenberg"}
# lr = lr_ref * (ref_width / width)^lr_width_exp. 0 (one rate for every size) by default: with 1, Adam's muP rule
# for hidden matrices, the narrow models' higher rates stalled them on the unigram plateau (README).
LR_WIDTH_EXP = 0.0
LR_STEP = 2.0  # a sweep whose best rate is at its edge goes on past it by this factor (lr_extend times at most)
WARMUP_FRAC = 0.05
MIN_LR_FRAC = 0.1  # cosine to a tenth of the peak (Chinchilla)
# Set per run by the sweep: given on the command line they are an error.
OWN = ("max_iters", "lr_decay_iters", "warmup_iters", "min_lr", "eval_interval", "log_interval", "max_seconds",
       "out_dir", "resume", "init_from", "eval_only")

# full: absolute budgets (FLOPs), the same for every generation, sized for ~40 min of llama on a busy 2-core CPU.
# quick: budgets relative to the largest model, rel x (its FLOPs per batch), so they fit any model and dataset.
SCALING = dict(full=dict(budgets=(8e11, 1.6e12, 3.2e12, 6.4e12), depths=(1, 2, 3, 4, 5), lrs=(1e-3, 2e-3, 4e-3),
                         lr_extend=2, eval_iters=10, boot=200),
               quick=dict(rel_budgets=(2, 4, 8), depths=(1, 2, 3), lrs=(3e-3, 6e-3), lr_extend=0,
                          eval_iters=2, boot=20))

# Published values, for the comparison table.
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
PUBLISHED = [  # (source, a, b, note)
    ("Chinchilla, Approach 1 (training curves)", 0.50, 0.50, "~20 tokens per parameter"),
    ("Chinchilla, Approach 2 (iso-FLOP)", 0.49, 0.51, "N all parameters, 70M-16B, 6e18-3e21 FLOPs"),
    ("Chinchilla, Approach 3 (parametric)", 0.46, 0.54, "E=1.69, A=406.4, B=410.7, α=0.34, β=0.28"),
    ("Kaplan et al. 2020", 0.73, 0.27, "N non-embedding; not annealed per budget"),
]


# ----------------------------------------------------------------------------------------------------------------
# Sizes, budgets, runs


def size_args(fields, depth):
    """The Config settings of the model at this depth (SIZE_RULES, for the fields this Config has)."""
    if "n_layer" not in fields or not ({"n_embd", "d_model"} & fields):
        die(f"the model's Config has no n_layer and n_embd (or d_model) fields, so common/scaling.py cannot size it "
            f"(its fields: {', '.join(sorted(fields))}); add a rule for its fields to SIZE_RULES")
    w = WIDTH * depth
    return {k: rule(depth, w) for k, rule in SIZE_RULES if k in fields}


def param_counts(model):
    """(non-embedding, total) parameters. Embedding: the weight of every nn.Embedding (token and position tables)
    and a head shaped like the token table or its transpose (untied); a head tied to the token table is the table.
    Shared tensors count once."""
    import torch

    tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    tokens = [t for t in tables if t.size(0) >= model.config.vocab_size]
    shapes = set()
    if tokens:
        shape = tuple(min(tokens, key=lambda t: t.size(0)).shape)
        shapes = {shape, shape[::-1]}
    ids = {id(t) for t in tables}
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    return sum(p.numel() for p in params if id(p) not in ids and tuple(p.shape) not in shapes), total


def parse(argv):
    """-> (own settings, run overrides). Own: --quick, --out, --budgets, --depths, --boot, --lr_width_exp; the rest
    goes to every train.py run, after RECIPE."""
    own = {"--quick": None, "--out": None, "--budgets": None, "--depths": None, "--boot": None, "--lr_width_exp": None}
    overrides = []
    for a in argv:
        key, eq, val = a.partition("=")
        if key in own:
            own[key] = val if eq else "True"
        elif a.startswith("--"):
            if key[2:].replace("-", "_") in OWN:
                die(f"{key} is set per run by the sweep (max_iters = D / tokens per iteration, and the schedule over "
                    f"it); leave it out")
            overrides.append(a)
        else:
            die(f"--scaling takes --key=value settings, not {a!r}; e.g. python bench.py --scaling --model=llama")
    return own, overrides


def numbers(text, flag, kind):
    """--budgets=1e12,2e12 / --depths=1,2,3 -> sorted distinct positive numbers, or one line saying what to give."""
    try:
        floats = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        floats = []
    vals = [kind(v) for v in floats]
    if not vals or min(vals) <= 0 or vals != floats:
        die(f"{flag}={text}: give positive {'whole numbers' if kind is int else 'numbers'}, comma-separated, "
            f"e.g. {flag}={'1,2,3,4,5' if kind is int else '2e12,6e12,1.8e13'}")
    return sorted(set(vals))


def plan(argv):
    """Read the command line and size every run: -> settings dict (model, budgets, sizes, runs, ...)."""
    from common.data import load_meta
    from common.settings import build_model, load_model_module, parse_config
    from train import DEFAULTS as TRAIN_DEFAULTS

    own, overrides = parse(argv)
    quick = own["--quick"] not in (None, "False")
    mode = SCALING["quick" if quick else "full"]
    depths = numbers(own["--depths"], "--depths", int) if own["--depths"] else list(mode["depths"])
    if len(depths) < 3:
        die(f"--depths={own['--depths']}: a parabola per budget needs at least 3 sizes (5 to 7 spanning the "
            f"optimum is the plan); give more depths")
    if not any(a.startswith("--model=") for a in overrides):
        overrides.append(f"--model={MODEL}")
    name = [a for a in overrides if a.startswith("--model=")][-1].partition("=")[2]
    fields = {f.name for f in dataclasses.fields(load_model_module(name).Config)}
    base = [f"--{k}={v}" for k, v in RECIPE.items() if k in TRAIN_DEFAULTS or k in fields]  # dropout: if it has one
    cfg, module, model_kwargs = parse_config(base + overrides, TRAIN_DEFAULTS, "bench.py --scaling")
    sized = [k for k in model_kwargs if k in {r for r, _ in SIZE_RULES} or k in ("n_layer", "n_embd", "d_model")]
    if sized:
        die(f"--{sized[0]}: the sweep sets the sizes (depth d, width {WIDTH} d); choose them with --depths=1,2,3,...")
    data_dir = os.path.join("data", cfg["dataset"])
    if cfg["dataset"] in PREPARE and not os.path.isfile(os.path.join(data_dir, "meta.json")):
        die(f"{data_dir}/meta.json is missing; prepare it first: {PREPARE[cfg['dataset']]} (or, online, without "
            f"--input)")
    meta = load_meta(data_dir, cfg["dataset"], auto_prepare=False)
    model_kwargs.setdefault("vocab_size", meta["vocab_size"])
    block = model_kwargs.get("block_size", module.Config.block_size)
    tpi = cfg["batch_size"] * block * cfg["gradient_accumulation_steps"]
    import torch

    sizes = []
    for d in depths:
        args = size_args(fields, d)
        torch.manual_seed(0)
        model = build_model(module, {**model_kwargs, **args})
        n, total = param_counts(model)
        sizes.append(dict(depth=d, width=WIDTH * d, args=args, n=n, n_total=total, fpt=model.flops_per_token()))
        del model
    if own["--budgets"]:
        budgets = numbers(own["--budgets"], "--budgets", float)
    elif quick:  # the largest model gets rel batches at the smallest budget
        budgets = [r * sizes[-1]["fpt"] * tpi for r in mode["rel_budgets"]]
    else:
        budgets = list(mode["budgets"])
    runs = []
    for c in budgets:
        for s in sizes:
            iters = round(c / (s["fpt"] * tpi))
            if iters < 1:
                die(f"budget {c:.3g} FLOPs is too small: the depth-{s['depth']} model ({s['fpt'] / 1e6:.3g} MFLOP per "
                    f"token) sees {c / (s['fpt'] * tpi):.2f} of a batch of {tpi} tokens; raise the smallest budget to "
                    f"at least {s['fpt'] * tpi:.3g} (--budgets=...) or drop the larger depths")
            runs.append(dict(budget=c, **{k: v for k, v in s.items() if k != "args"}, iters=iters,
                             tokens=iters * tpi, flops=iters * tpi * s["fpt"], args=s["args"]))
    model = cfg["model"]
    out = own["--out"] or f"bench/scaling_{model}" + ("_quick" if quick else "")
    try:
        boot = int(own["--boot"]) if own["--boot"] else mode["boot"]
        lr_width_exp = float(own["--lr_width_exp"]) if own["--lr_width_exp"] else LR_WIDTH_EXP
    except ValueError:
        die(f"--boot={own['--boot']} must be a whole number and --lr_width_exp={own['--lr_width_exp']} a number")
    user_lr = next((a.partition("=")[2] for a in overrides if a.startswith("--learning_rate=")), None)
    return dict(model=model, quick=quick, mode=mode, budgets=budgets, sizes=sizes, runs=runs, tpi=tpi,
                base=base, overrides=[a for a in overrides if not a.startswith("--learning_rate=")],
                lr=cfg["learning_rate"] if user_lr else None, out=out, boot=boot, eval_iters=mode["eval_iters"],
                out_root=os.path.join("out", os.path.basename(out)), dataset=cfg["dataset"], argv=argv,
                lr_width_exp=lr_width_exp)


class FlopsProgress(Progress):
    """Progress whose estimate of the time left weighs the runs still to do by their FLOPs (the runs of a sweep
    differ up to 30x in cost)."""

    def __init__(self, runs):
        super().__init__(len(runs))
        self.left, self.flops_done = sum(r["flops"] for r in runs), 0.0

    def update(self, name, run, ran, seconds, flops):
        self.seen += 1
        self.left -= flops
        if ran:
            self.spent.append(seconds)
            self.flops_done += flops
        eta = (f", about {self.left * sum(self.spent) / self.flops_done / 60:.1f} min left"
               if self.spent and self.left > 0 else "")
        last = run["log"][-1]
        print(f"[{self.seen}/{self.total}] {name}: val loss {last['val_loss']:.4f} after {last['time']:.0f} s "
              f"({seconds:.0f} s wall), {last['tokens'] / 1e6:.3f}M tokens"
              f"{'' if ran else ' (finished earlier, reused)'}{eta}", flush=True)


def run_lr(p, run, lr_ref):
    """The learning rate at this run's width: lr_ref at the sweep's width, times (ref_width / width)^lr_width_exp
    (0 by default: the same rate everywhere)."""
    return lr_ref * (p["ref_width"] / run["width"]) ** p["lr_width_exp"]


def run_args(plan_, run, lr):
    n = run["iters"]
    return (plan_["base"] + [f"--{k}={v}" for k, v in run["args"].items()] + plan_["overrides"] +
            [f"--max_iters={n}", f"--lr_decay_iters={n}", f"--warmup_iters={round(WARMUP_FRAC * n)}",
             f"--learning_rate={lr:g}", f"--min_lr={lr * MIN_LR_FRAC:g}", f"--eval_interval={n}",
             f"--log_interval={n}"] +
            ([] if any(a.startswith("--eval_iters=") for a in plan_["overrides"]) else  # the user's, if given
             [f"--eval_iters={plan_['eval_iters']}"]))


def run_name(run, lr):
    return f"C{run['budget']:.3g}_d{run['depth']}_lr{lr:g}"


def train_run(p, run, lr_ref, progress):
    """One train.py run of the sweep (reused when it finished earlier): -> its row for the results."""
    name, lr = run_name(run, lr_ref), run_lr(p, run, lr_ref)
    args = run_args(p, run, lr)
    kept = p["kept"].get(name)
    if kept and kept.get("args") == args:  # its line in the results file: the same run finished earlier
        log = [dict(val_loss=kept["val_loss"], time=kept["train_s"], tokens=kept["tokens"])]
        progress.update(name, dict(log=log), False, 0.0, run["flops"])
        return {k: v for k, v in kept.items() if k != "stage"}
    t0 = time.time()
    result, ran = run_one([], args, os.path.join(p["out_root"], name), name, quiet=True)
    progress.update(name, result, ran, time.time() - t0, run["flops"])
    last = result["log"][-1]
    return dict(name=name, budget=run["budget"], depth=run["depth"], width=run["width"], n=run["n"],
                n_total=run["n_total"], fpt=run["fpt"], iters=run["iters"], tokens=last["tokens"],
                flops=run["fpt"] * last["tokens"], lr=lr, lr_ref=lr_ref, val_loss=last["val_loss"],
                train_loss=last["train_loss"], train_s=last["time"],
                wall_s=round(time.time() - t0, 1) if ran else None, device=result["device"], args=args)


def write_results(path, rows):
    from common.checkpoints import atomic_write

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def scaling(argv):
    """python bench.py --scaling [--model=llama] [--quick] [--budgets=...] [--depths=...] [--out=...] [--boot=N]
    [--lr_width_exp=0] [--key=value for every run]: the learning-rate sweep (unless --learning_rate), then every
    budget x size, then the fits, bench/scaling_<model>.md/.png/.jsonl."""
    p = plan(argv)
    mid_budget, mid_size = p["budgets"][0], p["sizes"][len(p["sizes"]) // 2]  # the lr sweep's run
    mid = next(r for r in p["runs"] if r["budget"] == mid_budget and r["depth"] == mid_size["depth"])
    p["ref_width"] = mid["width"]
    lrs = [] if p["lr"] else sorted(p["mode"]["lrs"])
    progress = FlopsProgress(p["runs"] + [mid] * max(0, len(lrs) - 1))
    budgets, depths = ", ".join(f"{c:.3g}" for c in p["budgets"]), ", ".join(str(s["depth"]) for s in p["sizes"])
    print(f"scaling sweep of models/{p['model']}.py on {p['dataset']}: {len(p['budgets'])} budgets ({budgets} FLOPs)"
          f" x depths {depths} (width {WIDTH} x depth), {p['tpi']} tokens per iteration" +
          (f", after a learning-rate sweep at depth {mid['depth']} and {mid_budget:.3g} FLOPs" if lrs else ""),
          flush=True)
    rows, results = [], p["out"] + ".jsonl"
    p["kept"] = {}  # the runs of an earlier sweep's results file, reused when their train.py arguments match
    if os.path.isfile(results):
        with open(results) as f:
            p["kept"] = {r["name"]: r for r in map(json.loads, f) if "args" in r}
    sweep, extra = {}, 0
    while lrs:  # the learning rate: the best of the sweep at the middle size, smallest budget, one seed
        row = train_run(p, mid, lrs.pop(0), progress)
        sweep[row["lr_ref"]] = row["val_loss"]
        rows.append(dict(row, stage="lr"))
        write_results(results, rows)
        best = min(sweep, key=sweep.get)
        if not lrs and len(sweep) > 1 and best in (min(sweep), max(sweep)) and extra < p["mode"]["lr_extend"]:
            lrs, extra = [best / LR_STEP if best == min(sweep) else best * LR_STEP], extra + 1  # past the edge
            progress.total += 1
            progress.left += mid["flops"]
    lr = p["lr"] or min(sweep, key=sweep.get)
    if sweep:
        edge = lr in (min(sweep), max(sweep)) and len(sweep) > 1
        print(f"learning rate {lr:g} at width {p['ref_width']} (val loss by lr: "
              f"{', '.join(f'{k:g}: {v:.4f}' for k, v in sorted(sweep.items()))})"
              + (" -- still at the edge of the sweep: a wider one may find a better rate" if edge else ""), flush=True)
    for run in p["runs"]:
        if run is mid and lr in sweep:
            row = next(r for r in rows if r["name"] == run_name(run, lr))
            rows.append(dict(row, stage="grid"))
            continue
        rows.append(dict(train_run(p, run, lr, progress), stage="grid"))
        write_results(results, rows)
    write_results(results, rows)
    print(f"wrote {results}")
    grid = [r for r in rows if r["stage"] == "grid"]
    return report(grid, p["out"], f"python bench.py --scaling {' '.join(argv)}".strip(), sweep=sweep, lr=lr,
                  boot=p["boot"], sizes=p["sizes"], model=p["model"], dataset=p["dataset"], quick=p["quick"],
                  lr_rule=(p["ref_width"], p["lr_width_exp"]))


# ----------------------------------------------------------------------------------------------------------------
# The fits


def parabola_min(x, y):
    """x at the minimum of the least-squares parabola through (x, y), or None when it opens downwards."""
    c2, c1, _ = np.polyfit(x, y, 2)
    return None if c2 <= 0 else -c1 / (2 * c2)


def by_budget(rows):
    out = {}
    for r in rows:
        out.setdefault(r["budget"], []).append(r)
    return dict(sorted(out.items()))


def edges(rows):
    """The budgets whose lowest loss is at the smallest or largest size: -> [(budget, 'smallest' | 'largest')]."""
    out = []
    for c, rs in by_budget(rows).items():
        rs = sorted(rs, key=lambda r: r["n"])
        best = min(range(len(rs)), key=lambda i: rs[i]["val_loss"])
        if best in (0, len(rs) - 1):
            out.append((c, "smallest" if best == 0 else "largest"))
    return out


def approach2(rows, nkey="n", skip=()):
    """Iso-FLOP profiles: per budget a parabola of loss in log N, its minimum N_opt, and the tokens D_opt of a model
    of that size at that budget (log D interpolated in log N between the budget's runs). Then N_opt = k C^a and
    D_opt = k' C^b by least squares in log-log. skip: budgets left out (not bracketed). -> dict or None."""
    pts = []
    for c, rs in by_budget(rows).items():
        if c in skip:
            continue
        rs = sorted(rs, key=lambda r: r[nkey])
        x = np.log([r[nkey] for r in rs])
        if len(set(x)) < 3:
            continue
        y = [r["val_loss"] for r in rs]
        m = parabola_min(x, y)
        if m is None or not x[0] <= m <= x[-1]:
            continue
        pts.append((c, math.exp(m), math.exp(np.interp(m, x, np.log([r["tokens"] for r in rs]))),
                    float(np.polyval(np.polyfit(x, y, 2), m))))
    if len(pts) < 2:
        return None
    logc = np.log([p[0] for p in pts])
    a, ka = np.polyfit(logc, np.log([p[1] for p in pts]), 1)
    b, kb = np.polyfit(logc, np.log([p[2] for p in pts]), 1)
    return dict(points=pts, a=a, ka=ka, b=b, kb=kb, tpp=pts[-1][2] / pts[-1][1], c_max=pts[-1][0])


def huber(r, delta):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def law_loss_grad(P, logn, logd, logl, W, delta):
    """Chinchilla's objective for many parameter rows at once. P: (R, 5) = (a, b, e, alpha, beta) with A = e^a,
    B = e^b, E = e^e; W: (R, n) weights of the n runs (bootstrap multiplicities). -> (R,) sums of
    Huber(LSE(a - alpha log N, b - beta log D, e) - log L) and their (R, 5) gradients."""
    t = np.stack([P[:, :1] - P[:, 3:4] * logn, P[:, 1:2] - P[:, 4:5] * logd, np.broadcast_to(P[:, 2:3], W.shape)])
    m = t.max(0)
    ex = np.exp(t - m)
    s = ex.sum(0)
    r = m + np.log(s) - logl
    f = (W * huber(r, delta)).sum(1)
    gr = W * np.clip(r, -delta, delta)
    w = ex / s
    g = np.stack([(gr * w[0]).sum(1), (gr * w[1]).sum(1), (gr * w[2]).sum(1), -(gr * w[0] * logn).sum(1),
                  -(gr * w[1] * logd).sum(1)], 1)
    return f, g


def lbfgs(fg, X, iters=500, m=10, tol=1e-10):
    """Minimise from every row of X at once: L-BFGS with a backtracking (Armijo) line search, each row its own
    history. fg(P, rows) -> (values, gradients) of the rows of P, which are X's rows picked by the boolean mask
    `rows` (None: all). -> (X, f)."""
    X = X.astype(np.float64).copy()
    R = len(X)
    f, g = fg(X, None)
    S, Y, rho = [], [], []
    gamma = np.ones(R)
    live = np.ones(R, bool)
    for it in range(iters):
        q = g.copy()
        alphas = []
        for s, y, p in zip(reversed(S), reversed(Y), reversed(rho)):
            a = p * (s * q).sum(1)
            q -= a[:, None] * y
            alphas.append(a)
        r = gamma[:, None] * q
        for (s, y, p), a in zip(zip(S, Y, rho), reversed(alphas)):
            r += s * (a - p * (y * r).sum(1))[:, None]
        d = -r
        slope = (g * d).sum(1)
        bad = ~(slope < 0)
        d[bad] = -g[bad]
        slope[bad] = -(g[bad] ** 2).sum(1)
        if it == 0:  # no curvature yet: a first step of unit length at most
            scale = 1 / np.maximum(np.abs(d).max(1), 1e-300)
            d *= np.minimum(scale, 1.0)[:, None]
            slope *= np.minimum(scale, 1.0)
        step = np.ones(R)
        done = ~live
        Xn, fn, gn = X.copy(), f.copy(), g.copy()
        for _ in range(50):
            todo = ~done
            if not todo.any():
                break
            Xt = X[todo] + step[todo, None] * d[todo]
            ft, gt = fg(Xt, todo)
            ok = np.isfinite(ft) & (ft <= f[todo] + 1e-4 * step[todo] * slope[todo])
            idx = np.flatnonzero(todo)
            Xn[idx[ok]], fn[idx[ok]], gn[idx[ok]] = Xt[ok], ft[ok], gt[ok]
            done[idx[ok]] = True
            step[idx[~ok]] *= 0.5
        stalled = live & ~done  # no decrease found: this row is at its minimum (to line-search precision)
        s, y = Xn - X, gn - g
        sy = (s * y).sum(1)
        good = sy > 1e-20
        p = np.where(good, 1 / np.where(good, sy, 1), 0.0)
        gamma = np.where(good, sy / np.maximum((y * y).sum(1), 1e-300), gamma)
        S.append(s)
        Y.append(y)
        rho.append(p)
        if len(S) > m:
            S.pop(0), Y.pop(0), rho.pop(0)
        small = f - fn <= tol * np.abs(f)  # no relative progress: converged (or crawling along a flat valley)
        X, f, g = Xn, fn, gn
        live &= ~stalled & ~small
        if not live.any():
            break
    return X, f


def fit_law(logn, logd, logl, W, starts, delta=1e-3, keep=8):
    """Fit (a, b, e, alpha, beta) for each weight row of W from every start: 50 L-BFGS steps from all of them,
    then the best `keep` per row to convergence. W: (B, n) weights of the runs per replicate; starts: (S, 5).
    -> (B, 5) best parameters and (B,) their objective."""
    B, S = len(W), len(starts)

    def run(X0, Wr, iters):
        def fg(P, rows):
            return law_loss_grad(P, logn, logd, logl, Wr if rows is None else Wr[rows], delta)

        X, f = lbfgs(fg, X0, iters=iters)
        return X, np.where(np.isfinite(f), f, np.inf)

    X, f = run(np.tile(starts, (B, 1)), np.repeat(W, S, axis=0), 50)  # row i: replicate i // S, start i % S
    keep = min(keep, S)
    best = np.argsort(f.reshape(B, S), axis=1)[:, :keep]
    X = X.reshape(B, S, 5)[np.arange(B)[:, None], best].reshape(B * keep, 5)
    X, f = run(X, np.repeat(W, keep, axis=0), 500)
    f = f.reshape(B, keep)
    i = f.argmin(1)
    return X.reshape(B, keep, 5)[np.arange(B), i], f[np.arange(B), i]


def law(P, n, d):
    """The fitted L(N, D) (inf where a wild bootstrap fit overflows)."""
    a, b, e, alpha, beta = P
    with np.errstate(over="ignore"):
        return float(np.exp(e) + np.exp(a - alpha * np.log(n)) + np.exp(b - beta * np.log(d)))


GRID = np.array([(a, b, e, al, be) for al in (0, 0.5, 1, 1.5, 2) for be in (0, 0.5, 1, 1.5, 2)
                 for e in (-1, -0.5, 0, 0.5, 1) for a in (0, 5, 10, 15, 20, 25) for b in (0, 5, 10, 15, 20, 25)],
                dtype=np.float64)  # Chinchilla's grid of initialisations (Appendix D.2)
COARSE = np.array([(a, b, e, al, be) for al in (0.3, 1) for be in (0.3, 1) for e in (0, 1)
                   for a in (3, 10, 20) for b in (3, 10, 20)], dtype=np.float64)


def optimum(P, family, c):
    """N_opt, D_opt at compute c under the fitted law, along the sweep's size family: FLOPs per token as a function
    of N, interpolated in log-log between the sweep's sizes (extended linearly). -> (n, d, at_edge)."""
    logn, logf = family
    grid = np.linspace(logn[0] - 3, logn[-1] + 3, 4001)
    slope_lo = (logf[1] - logf[0]) / (logn[1] - logn[0])
    slope_hi = (logf[-1] - logf[-2]) / (logn[-1] - logn[-2])
    lf = np.interp(grid, logn, logf)
    lf = np.where(grid < logn[0], logf[0] + slope_lo * (grid - logn[0]), lf)
    lf = np.where(grid > logn[-1], logf[-1] + slope_hi * (grid - logn[-1]), lf)
    ld = math.log(c) - lf
    a, b, e, alpha, beta = P
    with np.errstate(over="ignore"):  # a wild bootstrap fit: inf losses, and its optimum lands at an edge
        loss = np.exp(e) + np.exp(a - alpha * grid) + np.exp(b - beta * ld)
    i = int(np.argmin(loss))
    return math.exp(grid[i]), math.exp(ld[i]), i in (0, len(grid) - 1)


def approach3(rows, nkey="n", boot=0, seed=0, family=None):
    """The parametric fit on all runs (Huber on log-loss, LSE form, Chinchilla's grid of starts), and per bootstrap
    replicate (runs resampled with replacement) a refit from the full-data optimum and a coarse grid. Allocation
    along the sweep's size family (FLOPs per token of each size, not 6N): N_opt(C), D_opt(C) at every budget, a and
    b their log-log slopes, tokens per parameter at the largest budget. -> dict, with "boot": a list of such dicts."""
    logn = np.log([r[nkey] for r in rows])
    logd = np.log([r["tokens"] for r in rows])
    logl = np.log([r["val_loss"] for r in rows])
    n = len(rows)
    P, f = fit_law(logn, logd, logl, np.ones((1, n)), GRID)
    budgets = sorted({r["budget"] for r in rows})
    if family is None:
        pairs = sorted({(r[nkey], r["fpt"]) for r in rows})
        family = (np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs]))

    out = law_summary(P[0], family, budgets)
    out["objective"] = float(f[0])
    out["boot"] = []
    if boot:
        rng = np.random.default_rng(seed)
        W = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(boot)]).astype(np.float64)
        Pb, _ = fit_law(logn, logd, logl, W, np.vstack([P[0][None], COARSE]))
        out["boot"] = [law_summary(p, family, budgets) for p in Pb]
    return out


def law_summary(P, family, budgets):
    """A fitted law's parameters and its compute-optimal allocation at each budget. A wild bootstrap fit (a log-A
    past ~709) overflows float64: its A or B is inf, and its percentiles still count it, instead of stopping."""
    opts = [optimum(P, family, c) for c in budgets]
    logc = np.log(budgets)
    a = np.polyfit(logc, np.log([o[0] for o in opts]), 1)[0]
    b = np.polyfit(logc, np.log([o[1] for o in opts]), 1)[0]
    alpha, beta = P[3], P[4]
    big = lambda v: math.exp(v) if v < 709 else math.inf  # noqa: E731
    return dict(P=P, E=big(P[2]), A=big(P[0]), B=big(P[1]), alpha=alpha, beta=beta, a=a, b=b,
                a_6nd=beta / (alpha + beta) if alpha + beta else float("nan"),
                b_6nd=alpha / (alpha + beta) if alpha + beta else float("nan"),
                tpp=opts[-1][1] / opts[-1][0], opts=opts, edge=any(o[2] for o in opts))


def approach2_boot(rows, nkey, skip, boot, seed=0):
    """Approach 2 per bootstrap replicate: the runs of each budget resampled with replacement."""
    rng = np.random.default_rng(seed)
    groups = by_budget(rows)
    out = []
    for _ in range(boot):
        sample = [rs[i] for rs in groups.values() for i in rng.integers(0, len(rs), len(rs))]
        fit = approach2(sample, nkey, skip)
        if fit is not None:
            out.append(fit)
    return out


def interval(vals, fmt="{:.2f}"):
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if len(vals) < 2:
        return ""
    lo, hi = np.percentile(vals, [5, 95])
    return f" [{fmt.format(lo)}, {fmt.format(hi)}]"


# ----------------------------------------------------------------------------------------------------------------
# The report


def md_table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def report(rows, out, command, sweep=None, lr=None, boot=0, sizes=None, model="", dataset="", quick=False,
           lr_rule=None):
    """The fits, bench/<out>.md and .png from the grid's rows; then, if a budget's best size is at an edge of the
    sweep, the one-line error (after writing: the table and plot show where). -> the fits."""
    import torch

    counts = {c: len(rs) for c, rs in by_budget(rows).items()}
    if min(counts.values()) < 3:
        c = min(counts, key=counts.get)
        die(f"budget {c:.3g} has {counts[c]} run(s): a parabola needs at least 3 sizes per budget; give more depths")
    edge = edges(rows)
    skip = {c for c, _ in edge}
    fits = {}
    for nkey in ("n", "n_total"):
        family = None
        if sizes:
            family = (np.log([s[nkey] for s in sizes]), np.log([s["fpt"] for s in sizes]))
        fits[nkey] = dict(a2=approach2(rows, nkey, skip), a2_boot=approach2_boot(rows, nkey, skip, boot),
                          a3=approach3(rows, nkey, boot, family=family))
    device = rows[0]["device"]

    def fmt(v, spec="{:.2f}"):
        return "-" if v is None or not math.isfinite(v) else spec.format(v)

    table = []
    for nkey, label in (("n", "non-embedding"), ("n_total", "all")):
        f2, b2, f3 = fits[nkey]["a2"], fits[nkey]["a2_boot"], fits[nkey]["a3"]
        if f2:
            table.append([f"2: iso-FLOP parabolas ({len(f2['points'])} budgets)", label,
                          fmt(f2["a"]) + interval([b["a"] for b in b2]), fmt(f2["b"]) + interval([b["b"] for b in b2]),
                          "-", "-", "-", "-", "-",
                          fmt(f2["tpp"], "{:.1f}") + interval([b["tpp"] for b in b2], "{:.1f}")])
        else:
            table.append(["2: iso-FLOP parabolas", label, "-", "-", "-", "-", "-", "-", "-",
                          "- (fewer than 2 budgets bracket their optimum)"])
        bs = f3["boot"]
        table.append([f"3: L = E + A/N^α + B/D^β ({len(rows)} runs)", label,
                      fmt(f3["a"]) + interval([b["a"] for b in bs]), fmt(f3["b"]) + interval([b["b"] for b in bs]),
                      fmt(f3["alpha"]) + interval([b["alpha"] for b in bs]),
                      fmt(f3["beta"]) + interval([b["beta"] for b in bs]),
                      fmt(f3["E"]) + interval([b["E"] for b in bs]), f"{f3['A']:.3g}", f"{f3['B']:.3g}",
                      fmt(f3["tpp"], "{:.1f}") + interval([b["tpp"] for b in bs], "{:.1f}") +
                      (" (optimum off the size range)" if f3["edge"] else "")])
    for src, a, b, note in PUBLISHED:
        c = CHINCHILLA if "Approach 3" in src else {}
        table.append([src, "non-embedding" if "Kaplan" in src else "all", f"{a:.2f}", f"{b:.2f}",
                      fmt(c.get("alpha")), fmt(c.get("beta")), fmt(c.get("E")), str(c.get("A", "-")),
                      str(c.get("B", "-")), "~20" if "Chinchilla" in src else "-"])
    fit_header = ["fit", "N counts", "a (N_opt ∝ C^a)", "b (D_opt ∝ C^b)", "α", "β", "E", "A", "B",
                  "D_opt / N_opt at the largest budget"]

    run_header = ["budget (FLOPs)", "depth", "width", "N non-emb", "N all", "MFLOP/token", "tokens", "iters",
                  "tokens / N non-emb", "tokens / N all", "val loss", "train s"]
    run_rows = []
    for c, rs in by_budget(rows).items():
        best = min(rs, key=lambda r: r["val_loss"])
        for r in sorted(rs, key=lambda r: r["n"]):
            loss = f"{r['val_loss']:.4f}"
            run_rows.append([f"{c:.3g}", r["depth"], r["width"], f"{r['n']:,.0f}", f"{r['n_total']:,.0f}",
                             f"{r['fpt'] / 1e6:.2f}", f"{r['tokens']:,.0f}", r["iters"], f"{r['tokens'] / r['n']:.1f}",
                             f"{r['tokens'] / r['n_total']:.2f}", f"**{loss}**" if r is best else loss,
                             f"{r['train_s']:.0f}"])
    notes = []
    if lr is not None and lr_rule:
        width, exp = lr_rule
        notes.append(f"Learning rate {lr:g} at width {width}" +
                     (f", times ({width} / width)^{exp:g} at the other widths" if exp else
                      ", the same at every width") +
                     (": the best final val loss of " + ", ".join(f"{k:g} ({v:.4f})" for k, v in sorted(sweep.items()))
                      + " at the middle size and the smallest budget" if sweep else " (given)") + ".")
    if edge:
        notes.append("Not bracketed (lowest loss at an edge of the sizes, left out of Approach 2): " +
                     "; ".join(f"{c:.3g} FLOPs at the {side} size" for c, side in edge) + ".")
    a3 = fits["n"]["a3"]
    small, large = min(rows, key=lambda r: r["n"]), max(rows, key=lambda r: r["n"])
    notes.append(f"Approach 3 with N non-embedding: a = β/(α+β) = {fmt(a3['a_6nd'])} and b = α/(α+β) = "
                 f"{fmt(a3['b_6nd'])} under C = 6ND (the paper's formula); the a and b in the table minimise the "
                 f"fitted law along this sweep's sizes with their own FLOPs per token, of which 6N is "
                 f"{6 * small['n'] / small['fpt']:.0%} at the smallest size and {6 * large['n'] / large['fpt']:.0%} "
                 f"at the largest (the rest: the output layer and attention).")
    text = (f"# Compute-optimal scaling: models/{model}.py on {dataset}{' (--quick: a smoke run)' if quick else ''}\n\n"
            f"{md_table(fit_header, table)}\n\n{md_table(run_header, run_rows)}\n\n" +
            "\n".join(f"- {n}" for n in notes) +
            f"\n\n[a, b] and [5%, 95%] intervals: {boot} bootstrap replicates over runs (Approach 2: resampled within "
            f"each budget). Command: `{command}`; {device}, torch {torch.__version__}.\n")
    from common.checkpoints import atomic_write

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with atomic_write(out + ".md", "w") as f:
        f.write(text)
    print("\n" + md_table(fit_header, table) + f"\n\nwrote {out}.md")
    plot(out + ".png", rows, fits, f"models/{model}.py on {dataset} ({device})")
    if edge:
        c, side = edge[0]
        more = "smaller" if side == "smallest" else "larger"
        if quick:  # a smoke run of the pipeline: too few steps to bracket anything, so no error
            print(f"warning: the sizes do not bracket the optimum at {len(edge)} budget(s); expected of a --quick run")
            return fits
        die(f"the sizes do not bracket the optimum at {len(edge)} budget(s) (at {c:.3g} FLOPs the {side} size has "
            f"the lowest loss); extend --depths toward {more} models (results and table written: {out}.md)")
    return fits


def plot(path, rows, fits, title):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    P = fits["n"]["a3"]["P"]
    groups = by_budget(rows)
    for i, (c, rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["n"])
        x = np.array([r["n"] for r in rs], float)
        y = [r["val_loss"] for r in rs]
        ax = axes[0]
        ax.plot(x, y, "o", color=f"C{i}", label=f"{c:.2g} FLOPs")
        lx = np.log(x)
        if len(set(lx)) >= 3:
            xs = np.linspace(lx[0], lx[-1], 100)
            ax.plot(np.exp(xs), np.polyval(np.polyfit(lx, y, 2), xs), "-", color=f"C{i}", alpha=0.6)
            ld = np.interp(xs, lx, np.log([r["tokens"] for r in rs]))
            ax.plot(np.exp(xs), [law(P, math.exp(a), math.exp(b)) for a, b in zip(xs, ld)], "--", color=f"C{i}",
                    alpha=0.6)
    f2 = fits["n"]["a2"]
    if f2:
        axes[0].plot([p[1] for p in f2["points"]], [p[3] for p in f2["points"]], "k*", ms=10,
                     label="parabola minima (N_opt)")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("non-embedding parameters N")
    axes[0].set_ylabel("val loss")
    axes[0].set_title("iso-FLOP profiles (solid: parabola, dashed: Approach 3)")
    axes[0].legend(fontsize=8)
    cs = np.array(sorted(groups))
    for k, (key, label, marker) in enumerate((("n", "N_opt (non-emb)", "o"), ("d", "D_opt (tokens)", "s"))):
        ax = axes[1]
        if f2:
            pts = np.array([(p[0], p[1] if key == "n" else p[2]) for p in f2["points"]])
            ax.plot(pts[:, 0], pts[:, 1], marker, color=f"C{k}", label=f"{label}, Approach 2")
            slope, icpt = (f2["a"], f2["ka"]) if key == "n" else (f2["b"], f2["kb"])
            ax.plot(cs, np.exp(icpt) * cs ** slope, "-", color=f"C{k}", alpha=0.6,
                    label=f"∝ C^{slope:.2f}")
        opts = fits["n"]["a3"]["opts"]
        ax.plot(cs, [o[0] if key == "n" else o[1] for o in opts], "--", color=f"C{k}",
                label=f"{label}, Approach 3")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("compute C (FLOPs)")
    axes[1].set_title("compute-optimal frontier")
    axes[1].legend(fontsize=8)
    pred = [law(P, r["n"], r["tokens"]) for r in rows]
    axes[2].scatter(pred, [r["val_loss"] for r in rows], c=[np.log(r["budget"]) for r in rows], cmap="viridis")
    lo, hi = min(pred + [r["val_loss"] for r in rows]), max(pred + [r["val_loss"] for r in rows])
    axes[2].plot([lo, hi], [lo, hi], "k-", lw=0.8)
    f3 = fits["n"]["a3"]
    axes[2].set_title(f"fitted law: E={f3['E']:.2f}, α={f3['alpha']:.2f}, β={f3['beta']:.2f}")
    axes[2].set_xlabel("predicted val loss")
    axes[2].set_ylabel("val loss")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
