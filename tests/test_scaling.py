"""common/scaling.py (python bench.py --scaling): the fits recover a known law, the size rule reads Config fields, the
--quick sweep runs end to end and resumes, and bad input is one line."""

import json
import math
import os

import numpy as np
import pytest

from conftest import ROOT, run

from common import scaling


def law_rows(E, A, B, alpha, beta, budgets=(1e17, 1e18, 1e19, 1e20), sizes=7, noise=0.002, seed=0):
    """Runs of an iso-FLOP sweep whose val loss follows L(N, D) = E + A/N^alpha + B/D^beta (times a log-normal
    noise), with C = 6ND and `sizes` sizes per budget spanning the true optimum by e^+-1.5."""
    rng = np.random.default_rng(seed)
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    a = beta / (alpha + beta)
    rows = []
    for c in budgets:
        n_opt = G * (c / 6) ** a
        for k, shift in enumerate(np.linspace(-1.5, 1.5, sizes)):
            n = n_opt * math.exp(shift)
            d = c / (6 * n)
            loss = (E + A / n ** alpha + B / d ** beta) * math.exp(rng.normal(0, noise))
            rows.append(dict(name=f"C{c:.3g}_d{k}", budget=c, depth=k + 1, width=32 * (k + 1), n=n, n_total=n,
                             fpt=6 * n, iters=1, tokens=d, val_loss=loss, train_s=0.0, device="synthetic"))
    return rows


@pytest.mark.parametrize("true", [dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),  # Chinchilla's fit
                                  dict(E=2.5, A=50.0, B=900.0, alpha=0.5, beta=0.3)])
def test_fits_recover_a_known_law(true):
    rows = law_rows(**true)
    a_true = true["beta"] / (true["alpha"] + true["beta"])
    # Approach 2: parabola minima per budget, then N_opt ∝ C^a, D_opt ∝ C^b (with C = 6ND, b = 1 - a)
    f2 = scaling.approach2(rows)
    assert len(f2["points"]) == 4
    assert f2["a"] == pytest.approx(a_true, abs=0.02) and f2["b"] == pytest.approx(1 - a_true, abs=0.02)
    # Approach 3: the parametric law itself, from Chinchilla's grid of starts, with bootstrap replicates
    f3 = scaling.approach3(rows, boot=8)
    assert f3["alpha"] == pytest.approx(true["alpha"], abs=0.02)
    assert f3["beta"] == pytest.approx(true["beta"], abs=0.02)
    assert f3["E"] == pytest.approx(true["E"], rel=0.03)
    assert f3["a"] == pytest.approx(a_true, abs=0.02) and f3["a_6nd"] == pytest.approx(a_true, abs=0.02)
    # tokens per parameter at the largest budget, against the closed form of the true law
    G = (true["alpha"] * true["A"] / (true["beta"] * true["B"])) ** (1 / (true["alpha"] + true["beta"]))
    n_opt = G * (1e20 / 6) ** a_true
    assert f3["tpp"] == pytest.approx(1e20 / 6 / n_opt ** 2, rel=0.15)
    alphas = [b["alpha"] for b in f3["boot"]]
    assert len(alphas) == 8 and min(alphas) - 0.02 <= true["alpha"] <= max(alphas) + 0.02


def test_lr_width_rule():
    p = dict(ref_width=96, lr_width_exp=1.0)
    assert scaling.run_lr(p, dict(width=32), 2e-3) == pytest.approx(6e-3)  # muP-style: lr ~ 1/width
    assert scaling.run_lr(dict(p, lr_width_exp=0.0), dict(width=32), 2e-3) == 2e-3


def test_lbfgs_on_a_quadratic_from_many_starts():
    target = np.array([1.0, -2.0, 3.0])
    scale = np.array([1.0, 10.0, 100.0])  # badly conditioned

    def fg(P, rows):
        r = P - target
        return (scale * r * r).sum(1), 2 * scale * r

    X, f = scaling.lbfgs(fg, np.random.default_rng(0).normal(0, 5, (20, 3)))
    assert np.abs(X - target).max() < 1e-5 and f.max() < 1e-9


@pytest.mark.parametrize("model", ["llama", "gpt2", "mamba2"])
def test_size_rule_reads_config_fields(model):
    import dataclasses

    import torch

    from common.settings import build_model, load_model_module

    module = load_model_module(model)
    fields = {f.name for f in dataclasses.fields(module.Config)}
    args = scaling.size_args(fields, 2)
    assert args["n_layer"] == 2 and args.get("n_embd", args.get("d_model")) == 64
    assert set(args) <= fields
    torch.manual_seed(0)
    m = build_model(module, dict(args, vocab_size=1000, block_size=32))
    n, total = scaling.param_counts(m)
    assert 0 < n < total
    if model == "llama":  # the token table (tied to the head) is the whole difference
        assert total - n == 1000 * 64
    with pytest.raises(SystemExit):
        scaling.size_args({"d_model", "n_encoder_layer"}, 2)


def test_quick_sweep_end_to_end_then_resumes(workdir):
    argv = ["--scaling", "--model=llama", "--quick", "--dataset=tiny", "--boot=4"]
    first = run("bench.py", *argv, cwd=workdir).stdout
    out = workdir / "bench" / "scaling_llama_quick"
    rows = [json.loads(line) for line in open(f"{out}.jsonl")]
    lr_rows, grid = [r for r in rows if r["stage"] == "lr"], [r for r in rows if r["stage"] == "grid"]
    assert len(lr_rows) == 2 and len(grid) == 9  # the lr sweep, then 3 budgets x 3 depths
    assert sum("(finished earlier, reused)" in line for line in first.splitlines()) == 0
    assert first.count("val loss") >= 10  # 2 lr runs + 9 grid runs, the middle one shared with the lr sweep
    for r in grid:
        assert math.isfinite(r["val_loss"]) and r["tokens"] == r["iters"] * 8 * 128
        assert abs(r["flops"] - r["budget"]) <= r["fpt"] * 8 * 128 / 2 + 1  # C = D * flops_per_token, whole batches
        assert r["n"] < r["n_total"]
    assert {r["budget"] for r in grid} == {r["budget"] for r in grid if r["depth"] == 1}
    # one rate for every size: the best of the sweep at the middle size and the smallest budget
    assert {r["lr"] for r in grid} == {min(lr_rows, key=lambda r: r["val_loss"])["lr"]}
    assert {(r["budget"], r["depth"]) for r in lr_rows} == {(min(r["budget"] for r in grid), 2)}
    md = open(f"{out}.md").read()
    assert "Chinchilla, Approach 3" in md and "Kaplan" in md and "iso-FLOP" in md
    assert os.path.isfile(f"{out}.png")
    mtimes = {p: os.path.getmtime(p) for p in (workdir / "out" / "scaling_llama_quick").glob("*/log.jsonl")}
    assert len(mtimes) == 10

    second = run("bench.py", *argv, cwd=workdir).stdout
    assert sum("(finished earlier, reused)" in line for line in second.splitlines()) == 10
    assert {p: os.path.getmtime(p) for p in mtimes} == mtimes  # nothing trained again
    assert [json.loads(line)["val_loss"] for line in open(f"{out}.jsonl")] == [r["val_loss"] for r in rows]


def one_line_error(capsys, fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


def test_bad_input_one_line(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    base = ["--model=llama", "--dataset=tiny"]
    says = one_line_error(capsys, scaling.scaling, base + ["--budgets=1e3,1e4,1e5"])
    assert "too small" in says and "sees 0.00 of a batch" in says and "--budgets" in says
    says = one_line_error(capsys, scaling.scaling, base + ["--depths=1,2", "--quick"])
    assert "at least 3 sizes" in says
    says = one_line_error(capsys, scaling.scaling, base + ["--max_iters=100"])
    assert "set per run by the sweep" in says
    says = one_line_error(capsys, scaling.scaling, base + ["--n_embd=64"])
    assert "--depths" in says
    says = one_line_error(capsys, scaling.scaling, base + ["--depths=1,x,3"])
    assert "--depths=1,x,3" in says
    says = one_line_error(capsys, scaling.scaling, ["--model=llama"])  # the default data, not prepared here
    assert "python prepare/gutenberg.py --tokenizer char --input ../shared/data/gutenberg" in says
    assert not (workdir / "out").exists()  # nothing trained


def test_not_bracketed_writes_then_fails(tmp_path, capsys):
    rows = law_rows(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, budgets=(1e17, 1e18, 1e19))
    small = [r for r in rows if r["depth"] >= 4]  # only sizes at and above the optimum: the smallest is best
    out = str(tmp_path / "bench" / "scaling_x")
    says = one_line_error(capsys, scaling.report, small, out, "test")
    assert "do not bracket the optimum at 3 budget(s)" in says and "toward smaller models" in says
    assert os.path.isfile(out + ".md") and "Not bracketed" in open(out + ".md").read()
    # fewer than 3 sizes in a budget
    says = one_line_error(capsys, scaling.report, [r for r in rows if r["depth"] in (3, 4)], out, "test")
    assert "at least 3 sizes per budget" in says
    # a bracketed sweep passes and reports both counts of N
    fits = scaling.report(rows, out, "test")
    assert fits["n"]["a2"] is not None and fits["n_total"]["a3"]["alpha"] > 0
    assert os.path.isfile(out + ".png") == (scaling.pyplot() is not None)


def test_bench_docstring_names_the_study():
    text = open(os.path.join(ROOT, "bench.py")).read()
    assert "--scaling" in text.split('"""')[1]


def test_a_wild_bootstrap_fit_gives_inf_not_an_overflow():
    """A bootstrap replicate can fit log A past float64's exp range; the report counted it instead of crashing."""
    family = (np.log([1e4, 1e5, 1e6]), np.log([2e5, 1e6, 1e7]))
    wild = scaling.law_summary(np.array([800.0, 5.0, 0.0, 0.3, 0.3]), family, [1e12, 2e12, 4e12])
    assert wild["A"] == math.inf and math.isfinite(wild["B"]) and wild["edge"]
    tame = scaling.law_summary(np.array([5.0, 5.0, 0.0, 0.3, 0.3]), family, [1e12, 2e12, 4e12])
    assert tame["A"] == pytest.approx(math.exp(5.0)) and 0 < tame["a"] < 1
