"""bench.py --compare (the evolution study) on two tiny configs for a few steps: the table and the plot exist and
parse. No timings are asserted."""

import json

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
