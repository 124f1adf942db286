"""The studies' pipelines on tiny configs for a few steps: bench.py --evolution (its statistics on synthetic logs,
--quick end to end, resume, a changed row), --compare, --ladder and --length. No timings are asserted."""

import json

import numpy as np
import pytest

import matplotlib.image

from conftest import run

CONFIG = """
dataset = 'tiny'
batch_size = 4
block_size = 32
max_iters = 12
eval_interval = 4
eval_iters = 2
eval_from = 15
warmup_iters = 2
device = 'cpu'
"""


def test_compare_writes_table_and_plot(workdir):
    (workdir / "a_gpt2.py").write_text(CONFIG + "model = 'gpt2'\nn_layer = 1\nn_head = 2\nn_embd = 32\n")
    (workdir / "b_mamba.py").write_text(CONFIG + "model = 'mamba'\nn_layer = 2\nd_model = 32\n")
    p = run("bench.py", "--compare", "a_gpt2.py", "b_mamba.py", "--max_seconds=60", "--out=res/evo", cwd=workdir)
    table = (workdir / "res" / "evo.md").read_text().splitlines()
    assert table[0].startswith("| config | model |") and set(table[1]) <= set("|-")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table[2:4]}
    assert set(rows) == {"a_gpt2", "b_mamba"} and rows["b_mamba"][1] == "mamba"
    for name in rows:
        log = [json.loads(line) for line in (workdir / "out" / "compare" / name / "log.jsonl").open()]
        assert log[0]["model"] == name[2:] and [e["iter"] for e in log[1:]] == [0, 4, 8, 12]
        assert float(rows[name][7]) == round(log[-1]["val_loss"], 4)  # final val loss in the table
    img = matplotlib.image.imread(workdir / "res" / "evo.png")
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert "Command: `python bench.py --compare" in (workdir / "res" / "evo.md").read_text() and "wrote" in p.stdout


def test_eval_from_scores_only_later_positions(workdir):
    base = ["--model=gpt2", "--dataset=tiny", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32",
            "--batch_size=4", "--max_iters=0", "--eval_iters=2", "--sample_tokens=0", "--device=cpu"]
    full = run("train.py", *base, "--out_dir=a", cwd=workdir).stdout
    late = run("train.py", *base, "--out_dir=b", "--eval_from=16", cwd=workdir).stdout
    assert "val loss" in full and full.split("val loss")[1] != late.split("val loss")[1]


def test_max_seconds_budget_stops_training_and_decays_lr(workdir):
    from train import DEFAULTS, get_lr

    args = ["--model=gpt2", "--dataset=tiny", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32",
            "--batch_size=4", "--max_iters=1000000", "--max_seconds=1.5", "--eval_interval=50", "--eval_iters=1",
            "--sample_tokens=0", "--device=cpu", "--out_dir=out"]
    run("train.py", *args, cwd=workdir)
    log = [json.loads(line) for line in (workdir / "out" / "log.jsonl").open()][1:]
    assert 1.5 <= log[-1]["time"] < 30 and 0 < log[-1]["iter"] < 1000000
    cfg = {**DEFAULTS, "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 10}
    assert get_lr(500, cfg, time_frac=0.5) == 5.5e-4 and get_lr(500, cfg, time_frac=1.01) == 1e-4


def test_a_killed_study_resumes_and_a_changed_config_reruns_only_its_run(workdir):
    (workdir / "a_gpt2.py").write_text(CONFIG + "model = 'gpt2'\nn_layer = 1\nn_head = 2\nn_embd = 32\n")
    (workdir / "b_gpt2.py").write_text(CONFIG + "model = 'gpt2'\nn_layer = 1\nn_head = 1\nn_embd = 16\n")
    args = ["--compare", "a_gpt2.py", "b_gpt2.py", "--out=res/evo"]
    first = run("bench.py", *args, cwd=workdir).stdout
    assert "[1/2] a_gpt2.py" in first and "[2/2] b_gpt2.py" in first and "reused" not in first
    # As if the study had been killed during b's run: its marker is gone (a's run finished).
    (workdir / "out" / "compare" / "b_gpt2" / "study_run.json").unlink()
    again = run("bench.py", *args, cwd=workdir).stdout
    assert "a_gpt2: val loss" in again and "(finished earlier, reused)" in again.split("a_gpt2: val loss")[1].split("\n")[0]
    assert "[2/2] b_gpt2.py" in again  # b trained again
    (workdir / "a_gpt2.py").write_text(CONFIG + "model = 'gpt2'\nn_layer = 1\nn_head = 2\nn_embd = 64\n")
    changed = run("bench.py", *args, cwd=workdir).stdout
    assert "[1/2] a_gpt2.py" in changed and "[2/2] b_gpt2.py" not in changed
    assert "b_gpt2: val loss" in changed and "reused" in changed.split("b_gpt2: val loss")[1].split("\n")[0]


def test_steps_to_a_target_loss():
    from common.ladder import steps_to

    runs = [dict(log=[dict(iter=0, val_loss=4.0), dict(iter=100, val_loss=2.0), dict(iter=200, val_loss=1.5)]),
            dict(log=[dict(iter=0, val_loss=4.0), dict(iter=100, val_loss=2.5), dict(iter=200, val_loss=2.1)])]
    assert steps_to(runs, 2.0) == [100, None] and steps_to(runs, 2.1) == [100, 200] and steps_to(runs, 5) == [100, 100]


def test_an_lr_sweep_whose_best_is_at_an_edge_extends_that_way():
    from common.ladder import best_lr

    def sweep(best, extend):  # a fake train(): val loss |log(lr / best)|, so the best rate is `best`
        import math

        tried = []

        def train(path, name, tag, extra):
            lr = float(next(a for a in extra if a.startswith("--learning_rate="))[16:])
            tried.append(lr)
            return dict(log=[dict(val_loss=abs(math.log(lr / best)))])
        lr, _ = best_lr(train, "row.py", "row", 1e-3, dict(sweep_iters=10, lr_mults=(1 / 3, 1.0, 3.0), extend=extend))
        return lr, [round(t / 1e-3, 3) for t in tried]

    assert sweep(1e-3, 2) == (1e-3, [0.333, 1.0, 3.0])  # inside: nothing more
    assert sweep(9e-3, 2)[1] == [0.333, 1.0, 3.0, 9.0, 27.0] and abs(sweep(9e-3, 2)[0] - 9e-3) < 1e-12
    assert sweep(1e-4, 2)[1] == [0.333, 1.0, 3.0, 0.111, 0.037]
    assert sweep(1e-1, 2)[1] == [0.333, 1.0, 3.0, 9.0, 27.0]  # still at the edge after k more: stops there
    assert sweep(9e-3, 0)[1] == [0.333, 1.0, 3.0]  # the ladder's default: no extension


def test_an_lr_sweep_with_a_tolerance_gives_ties_to_the_centre():
    from common.ladder import best_lr

    def sweep(losses, tol, extend=1):  # a fake train(): fixed final losses per rate (a rate not listed: 9.0)
        tried = []

        def train(path, name, tag, extra):
            lr = float(next(a for a in extra if a.startswith("--learning_rate="))[16:])
            tried.append(round(lr / 1e-3, 3))
            return dict(log=[dict(val_loss=losses.get(round(lr / 1e-3, 3), 9.0))])
        lr, _ = best_lr(train, "row.py", "row", 1e-3, dict(sweep_iters=10, lr_mults=(0.5, 1.0, 2.0), extend=extend,
                                                           tol=tol))
        return round(lr / 1e-3, 3), tried

    assert sweep({0.5: 2.1, 1.0: 2.000, 2.0: 1.995}, tol=0.01) == (1.0, [0.5, 1.0, 2.0])  # a tie: the centre
    assert sweep({0.5: 2.1, 1.0: 2.000, 2.0: 1.995}, tol=0.0) == (2.0, [0.5, 1.0, 2.0, 4.0])  # the edge: extend
    assert sweep({0.5: 2.1, 1.0: 2.000, 2.0: 1.950, 4.0: 1.945}, tol=0.01) == (2.0, [0.5, 1.0, 2.0, 4.0])
    assert sweep({0.5: 1.995, 1.0: 2.000, 2.0: 1.999}, tol=0.01)[0] == 1.0  # within tol on both sides
    assert sweep({0.5: 2.000, 1.0: 2.1, 2.0: 2.000}, tol=0.01, extend=0)[0] == 0.5  # equally far: the smaller


def test_paired_delta_claims_only_gaps_larger_than_the_spread():
    from common.study import mean_std, paired_delta

    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([5.0]) == (5.0, 0.0)
    m, sd, real = paired_delta([1.50, 1.52, 1.49], [1.60, 1.61, 1.60])  # better on every seed, by ~0.1
    assert abs(m + 0.1) < 1e-9 and sd < 0.02 and real
    m, sd, real = paired_delta([1.55, 1.62, 1.58], [1.60, 1.57, 1.60])  # -0.05, +0.05, -0.02: inside the spread
    assert abs(m + 0.0067) < 1e-3 and not real
    assert not paired_delta([1.0], [2.0])[2]  # one seed claims nothing


LADDER_BASE = CONFIG.replace("max_iters = 12\n", "") + "model = 'lab'\nn_layer = 1\nn_head = 2\nn_embd = 32\n" \
    "learning_rate = 3e-3\n"


def test_ladder_and_length_study_quick_end_to_end_and_resume(workdir):
    lab = workdir / "lab"
    lab.mkdir()
    (lab / "base.py").write_text(LADDER_BASE)
    (lab / "1_gpt2.py").write_text("# GPT-2's choices.\nmodel = 'lab'\n_parent = None\n")
    (lab / "2_alibi.py").write_text("# + ALiBi.\nmodel = 'lab'\nposition = 'alibi'\n_parent = '1_gpt2'\n"
                                    "_claim = 'extrapolates'\n")  # a row with a claim: two more columns
    p = run("bench.py", "--ladder", "lab", "--quick", "--out=res/ladder", cwd=workdir)
    assert "[12/12]" in p.stdout  # 2 rows x (2 learning rates + 2 seeds x 2 protocols)
    table = (workdir / "res" / "ladder.md").read_text().splitlines()
    assert table[0].startswith("| row | parent | change |") and len([r for r in table if r.startswith("| 2_")]) == 1
    row = [r for r in table if r.startswith("| 2_alibi")][0].split(" | ")
    assert row[1] == "1_gpt2" and row[2] == "+ ALiBi." and "±" in row[7] and "±" in row[8] and "±" in row[10]
    assert table[0].endswith("| steps to the parent's final loss | published claim |")
    assert row[12] == "extrapolates |" and ("fewer" in row[11] or row[11].startswith("not reached in 20"))
    assert [r for r in table if r.startswith("| 1_gpt2")][0].endswith("| - | - |")
    for png in ("ladder.png", "ladder_curves.png"):
        assert matplotlib.image.imread(workdir / "res" / png).shape[0] > 100
    again = run("bench.py", "--ladder", "lab", "--quick", "--out=res/ladder", cwd=workdir).stdout
    assert again.count("(finished earlier, reused)") == 12
    p = run("bench.py", "--ladder", "lab", "--quick", "--rows=9_nope", cwd=workdir, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "--rows: no row '9_nope'" in p.stderr

    # The length study: the ladder's sweeps are reused, one new run per row and seed, then 1x, 2x, 4x block_size.
    p = run("bench.py", "--length", "lab", "--quick", "--out=res/length", cwd=workdir)
    assert p.stdout.count("(finished earlier, reused)") == 4 and "[8/8]" in p.stdout
    table = (workdir / "res" / "length.md").read_text().splitlines()
    assert table[0] == "| row | change | params | 1x whole | 2x whole | 2x past | 4x whole | 4x past |"
    learned = [r for r in table if r.startswith("| 1_gpt2")][0].split(" | ")
    alibi = [r for r in table if r.startswith("| 2_alibi")][0].split(" | ")
    assert "±" in learned[3] and learned[4] == "cannot" and learned[5] == "-"  # learned positions end at block_size
    assert all("±" in c for c in alibi[3:])
    assert "learned positions end at block_size" in (workdir / "res" / "length.md").read_text()
    assert matplotlib.image.imread(workdir / "res" / "length.png").shape[0] > 100

    # window_losses: the val split cut into windows of 2 x block_size; the same numbers computed window by window.
    import os

    import numpy as np
    import torch
    import torch.nn.functional as F

    from common.checkpoints import load_checkpoint
    from common.ladder import window_losses
    from models.lab import Config, Model

    ckpt_path = workdir / "out" / "lab" / "2_alibi" / "length_s1337" / "ckpt.pt"
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        got = window_losses(str(ckpt_path), [2, 4], max_tokens_per_batch=100)  # several windows per batch
    finally:
        os.chdir(cwd)
    ckpt = load_checkpoint(str(ckpt_path))
    model = Model(Config(**ckpt["model_config"])).eval()
    model.load_state_dict(ckpt["model"])
    val = np.fromfile(workdir / "data" / "tiny" / "val.bin", dtype=np.uint16).astype(np.int64)
    block, L = model.config.block_size, 2 * model.config.block_size
    n = (len(val) - 1) // (4 * block) * (4 * block)  # the same tokens at every length: a multiple of the longest
    nll = []
    with torch.no_grad():
        for i in range(0, n, L):
            x, y = torch.from_numpy(val[i:i + L])[None], torch.from_numpy(val[i + 1:i + L + 1])[None]
            nll.append(F.cross_entropy(model(x)[0][0], y[0], reduction="none"))
    nll = torch.stack(nll)
    assert abs(got[2][0] - nll.mean().item()) < 1e-5 and abs(got[2][1] - nll[:, block:].mean().item()) < 1e-5
    assert got[4][1] is not None and got[2][0] != got[4][0]


# ----------------------------------------------------------------------------------------------------------------
# The evolution study


def fake_run(finals, tokens=7680, time=2.0, params=1000, flops=None):
    """A run dict as run_one returns it: the log.jsonl header and its evaluations (the last one is final)."""
    return dict(params=params, flops_per_token=flops, tokens_per_iter=384, device="cpu",
                log=[dict(iter=0, tokens=0, time=0.0, val_loss=4.0), dict(iter=20, tokens=tokens, time=time,
                                                                           val_loss=finals)])


def test_evolution_statistics_on_synthetic_logs():
    from common.evolution import LN2, summarize, table_rows

    def row(lr, sweep, tok, tim):
        return dict(lr=lr, sweep=sweep, tokens=[fake_run(v, flops=2e6) for v in tok],
                    time=[fake_run(v, tokens=t, time=2.0) for v, t in tim])

    rows = {"a": row(1e-3, {5e-4: 2.1, 1e-3: 2.0, 2e-3: 2.05}, [2.0, 2.1, 1.9],
                     [(2.2, 4000), (2.3, 5000), (2.1, 6000)]),
            "b": row(2e-3, {1e-3: 1.9, 2e-3: 1.8}, [1.8, 1.9, 1.7], [(2.25, 3000), (2.2, 3000), (2.25, 3000)]),
            "m": row(1e-3, {1e-3: 3.0}, [3.0, 3.1, 2.9], [(3.0, 100), (3.1, 100), (2.9, 100)])}
    info = {"a": (None, "", "claim a", None), "b": ("a", "", "claim b", None), "m": ("a", "", None, "mlm")}
    stats = summarize(rows, ["a", "b", "m"], info)
    assert stats["a"]["tokens_mean"] == pytest.approx((2.0, 0.1)) and "tokens_delta" not in stats["a"]
    m, sd, real = stats["b"]["tokens_delta"]  # b - a = -0.2 on every seed: a real gap
    assert m == pytest.approx(-0.2) and sd == pytest.approx(0.0, abs=1e-12) and real
    m, sd, real = stats["b"]["time_delta"]  # +0.05, -0.1, +0.15: inside the spread
    assert m == pytest.approx(0.1 / 3) and not real
    assert "tokens_delta" not in stats["m"]  # another table: no delta against a row of the main table
    assert stats["a"]["tokens_per_s"][0] == pytest.approx(2500.0) and stats["a"]["time_tokens"][0] == 5000
    a, b = table_rows(["a", "b"], info, stats, bpt=1.25)
    assert a[:6] == ["a", "-", "0.001M", "2.00", "2,500", "0.001"] and a[8] == "-" and a[11] == "-"
    assert a[6] == "2.0000 ± 0.1000" and a[7] == f"{2.0 / LN2 / 1.25:.3f}"
    assert b[5] == "0.002*"  # the best rate at the sweep's edge is marked
    assert b[8] == "-0.200 ± 0.000" and b[11].endswith("(noise)") and b[10] == "0.00M"
    assert table_rows(["m"], info, stats, None)[0][7] == "-"  # no bits per byte for a masked-LM loss


def test_bytes_per_token_counts_utf8_bytes(tmp_path, monkeypatch):
    from common.evolution import bytes_per_token

    data = tmp_path / "data" / "tiny_utf8"
    data.mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps(dict(vocab_size=3, tokenizer="char", chars="ab\u00e9")))
    np.array([0, 1, 2, 2], dtype=np.uint16).tofile(data / "val.bin")  # a, b, e-acute (2 bytes) twice: 6 bytes
    np.array([0, 1, 2], dtype=np.uint16).tofile(data / "train.bin")
    monkeypatch.chdir(tmp_path)
    assert bytes_per_token("tiny_utf8") == pytest.approx(6 / 4)


EVO_BASE = CONFIG.replace("max_iters = 12\n", "")


def test_evolution_quick_end_to_end_resume_and_a_changed_row(workdir):
    evo = workdir / "evo"
    evo.mkdir()
    (evo / "base.py").write_text(EVO_BASE)
    (evo / "1_gpt2.py").write_text("# GPT-2\nmodel = 'gpt2'\nn_layer = 1\nn_head = 2\nn_embd = 32\n"
                                   "learning_rate = 2e-3\n_parent = None\n_claim = 'first'\n")
    llama = ("# LLaMA\nmodel = 'llama'\nn_layer = 1\nn_head = 2\nn_kv_head = 2\nn_embd = 32\n_parent = '1_gpt2'\n"
             "_claim = 'better'\n")
    (evo / "2_llama.py").write_text(llama)
    (evo / "3_bert.py").write_text("# BERT\nmodel = 'bert'\nn_layer = 1\nn_head = 2\nn_embd = 32\n"
                                   "_table = 'masked LM'\n_claim = 'apart'\n")
    p = run("bench.py", "--evolution", "evo", "--quick", "--out=res/evo", cwd=workdir, timeout=600)
    # Per row: 2 learning rates (seed 1337's equal-tokens runs), the winner counted again as reused, the second
    # seed's equal-tokens run, 2 equal-time runs.
    assert "[18/18]" in p.stdout and p.stdout.count("(finished earlier, reused)") == 3
    text = (workdir / "res" / "evo.md").read_text()
    main, other = text.split("masked LM: a loss of its own")
    assert "| 1_gpt2 | - |" in main and "| 2_llama | 1_gpt2 |" in main and "3_bert" not in main.split("Learning")[0]
    assert "| 3_bert | - |" in other
    llama_row = next(line for line in main.splitlines() if line.startswith("| 2_llama")).split(" | ")
    assert "±" in llama_row[6] and "±" in llama_row[8] and "±" in llama_row[11]
    assert "- 2_llama vs 1_gpt2: better Here: equal tokens:" in text and "Command: `python bench.py --evolution" in text
    res = json.loads((workdir / "res" / "evo.json").read_text())
    for name, r in res["rows"].items():  # the finals are the runs' last evaluations, per seed
        lr = r["lr"]
        for k, seed in enumerate((1337, 1338)):
            log = [json.loads(line) for line in
                   (workdir / "out" / "evo" / name / f"tokens_s{seed}_lr{lr:g}" / "log.jsonl").open()]
            assert r["tokens"][k] == log[-1]["val_loss"] and log[-1]["iter"] == 20
        lr0 = 2e-3 if name == "1_gpt2" else 1e-3  # the row's learning_rate, else base.py's, else 1e-3
        assert set(r["sweep"]) == {f"{lr0 * m:g}" for m in (1, 2)} and lr in (lr0, 2 * lr0)
    assert matplotlib.image.imread(workdir / "res" / "evo.png").shape[0] > 100

    again = run("bench.py", "--evolution", "evo", "--quick", "--out=res/evo", cwd=workdir).stdout
    assert again.count("(finished earlier, reused)") == 18
    (evo / "2_llama.py").write_text(llama.replace("n_embd = 32", "n_embd = 16"))  # only its own cells rerun
    changed = run("bench.py", "--evolution", "evo", "--quick", "--out=res/evo", cwd=workdir).stdout
    assert changed.count("(finished earlier, reused)") == 12 + 1 and "2_llama tokens_s1337" in changed
    assert not any(line.startswith(("1_gpt2 ", "3_bert ")) for line in changed.splitlines())  # no run of theirs
