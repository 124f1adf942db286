"""train.py and sample.py end to end on a tiny character dataset, as a user runs them."""

import os
import re
import shutil
import sys

import pytest
import torch

from conftest import ROOT, SHAKESPEARE, TINY, copy_repo, corpus_text, run
from train import DEFAULTS, get_lr


def logged(out, kind):
    """{iter: loss} from train.py's log lines: kind 'iter' (train step loss) or 'step' (val loss at evals)."""
    pat = r"^iter (\d+): loss ([\d.]+)" if kind == "iter" else r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)"
    return {int(m[1]): m[2] for m in re.finditer(pat, out, re.M)}


def test_smoke_run_writes_a_plain_checkpoint(workdir):
    p = run("train.py", *TINY, "--out_dir=out", cwd=workdir)
    assert "step 20:" in p.stdout and "tok/s" in p.stdout
    ckpt = torch.load(workdir / "out" / "ckpt.pt", weights_only=True)
    assert ckpt["model_name"] == "gpt2" and ckpt["iter_num"] == 20 and ckpt["model_config"]["n_layer"] == 2
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert not os.path.exists(workdir / "out" / "ckpt.pt.tmp")
    assert float(logged(p.stdout, "step")[20]) < float(logged(p.stdout, "step")[0])  # it learned something


def test_resume_continues_exactly(workdir):
    args = [*TINY, "--max_iters=30", "--lr_decay_iters=30", "--log_interval=1", "--dropout=0.1"]
    whole = run("train.py", *args, "--out_dir=a", cwd=workdir).stdout
    run("train.py", *args, "--out_dir=b", "--max_iters=20", cwd=workdir)
    resumed = run("train.py", *args, "--out_dir=b", "--resume", cwd=workdir).stdout
    assert "resumed from" in resumed
    for kind, first in (("iter", 21), ("step", 20)):
        a = {k: v for k, v in logged(whole, kind).items() if k >= first}
        assert a and a == logged(resumed, kind)
    # bitwise equal on CPU float32: data order, dropout RNG, optimizer and schedule are all restored
    wa = torch.load(workdir / "a" / "ckpt.pt", weights_only=True)["model"]
    wb = torch.load(workdir / "b" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sample_from_checkpoint(workdir):
    run("train.py", *TINY, "--out_dir=out", cwd=workdir)
    p = run("sample.py", "--ckpt=out", "--start=the ", "--num_samples=2", "--max_new_tokens=30", "--device=cpu",
            cwd=workdir)
    assert p.stdout.count("the ") >= 2 and "tok/s" in p.stderr
    (workdir / "prompt.txt").write_text("king")
    p = run("sample.py", "--ckpt=out/ckpt.pt", "--start=FILE:prompt.txt", "--num_samples=1", "--max_new_tokens=5",
            "--temperature=0", "--device=cpu", cwd=workdir)
    assert p.stdout.startswith("king")


def test_fork_a_model_file_and_train_it(tmp_path, workdir):
    repo = copy_repo(tmp_path / "fork")
    src = (repo / "models" / "gpt2.py").read_text()
    (repo / "models" / "mygpt.py").write_text(src.replace('"""\nGPT-2', '"""\nMy GPT-2 fork', 1))
    shutil.copytree(workdir / "data", repo / "data")
    env = {"PYTHONPATH": ""}
    run([sys.executable, "train.py"], *TINY, "--model=mygpt", "--out_dir=out", cwd=repo, env=env)
    assert torch.load(repo / "out" / "ckpt.pt", weights_only=True)["model_name"] == "mygpt"
    p = run([sys.executable, "sample.py"], "--ckpt=out", "--max_new_tokens=10", "--num_samples=1", "--device=cpu",
            cwd=repo, env=env)
    assert len(p.stdout) > 5


def test_ddp_two_processes_match_one_process(workdir):
    common = [*TINY, "--max_iters=6", "--eval_interval=6", "--gradient_accumulation_steps=2", "--dropout=0.0"]
    run("train.py", *common, "--out_dir=single", cwd=workdir)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                os.path.join(ROOT, "train.py")]
    p = run(torchrun, *common, "--out_dir=ddp", cwd=workdir)
    assert "2 process(es)" in p.stdout
    a = torch.load(workdir / "single" / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(workdir / "ddp" / "ckpt.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    assert any((a[k] - torch.load(workdir / "single" / "ckpt.pt", weights_only=True)["model"][k]).abs().sum() == 0
               for k in a)


def test_torch_compile_smoke(workdir):
    p = run("train.py", *TINY, "--max_iters=4", "--eval_interval=4", "--log_interval=2", "--compile=True",
            "--out_dir=out", cwd=workdir)
    assert "compile=True" in p.stdout and "step 4:" in p.stdout
    ckpt = torch.load(workdir / "out" / "ckpt.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["model"])


def test_wandb_offline(workdir):
    p = run("train.py", *TINY, "--max_iters=10", "--wandb_log=True", "--out_dir=out", cwd=workdir,
            env={"WANDB_MODE": "offline", "WANDB_DIR": str(workdir), "WANDB_SILENT": "true"})
    runs = list((workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), p.stdout


def test_prepares_missing_data_itself(tmp_path):
    # the canonical download is cached as data/<dataset>/input.txt; with it present no network is needed
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    text = open(SHAKESPEARE).read() if os.path.isfile(SHAKESPEARE) else corpus_text(200_000)
    (tmp_path / "data" / "shakespeare_char" / "input.txt").write_text(text)
    args = [a for a in TINY if not a.startswith("--dataset")]
    p = run("train.py", *args, "--dataset=shakespeare_char", "--max_iters=2", "--out_dir=out", cwd=tmp_path)
    assert "is missing: running" in p.stdout and (tmp_path / "data" / "shakespeare_char" / "val.bin").exists()


def test_schedules():
    cfg = {**DEFAULTS, "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 10, "lr_decay_iters": 110}
    lrs = [get_lr(i, cfg) for i in range(200)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1e-3  # linear warmup
    assert max(lrs) == pytest.approx(1e-3, rel=1e-2) and lrs[60] == pytest.approx(5.5e-4, rel=1e-6)  # half-way
    assert lrs[150] == 1e-4  # flat at min_lr after decay
    noam = {**cfg, "schedule": "noam", "learning_rate": 128 ** -0.5}
    n = [get_lr(i, noam) for i in range(100)]
    assert max(range(100), key=lambda i: n[i]) == 9  # peak at step == warmup_iters
    assert n[99] == pytest.approx(128 ** -0.5 * 100 ** -0.5)
    assert get_lr(7, {**cfg, "schedule": "constant"}) == 1e-3


# Bad settings (unknown key, wrong type, missing config/model/dataset, ...) are in test_reliability.py's catalogue.
