"""train.py and sample.py end to end on a tiny character dataset, as a user runs them."""

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from common.data import get_batch, sample_starts
from common.devices import peak_flops_of
from conftest import ROOT, SHAKESPEARE, TINY, copy_repo, corpus_text, run
from models import gpt2
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
    # ... and the match is not that of two untouched models: every tensor moved away from the initial weights
    torch.manual_seed(1337)  # train.py's seed, before it builds the model
    vocab = json.loads((workdir / "data" / "tiny" / "meta.json").read_text())["vocab_size"]
    init = gpt2.Model(gpt2.Config(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=vocab)).state_dict()
    assert all(not torch.equal(a[k], init[k]) for k in a)


# A wrapper run by every torchrun process: train.py unchanged, then each rank saves the weights it ended with and a
# draw from its torch RNG (the stream dropout and router noise use).
PER_RANK = """
import os, runpy, sys
sys.path.insert(0, {root!r})
import torch
kept = {{}}
class DDP(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        kept["model"] = module
torch.nn.parallel.DistributedDataParallel = DDP
runpy.run_path({train!r}, run_name="__main__")
torch.save({{"model": kept["model"].state_dict(), "draw": torch.rand(4)}}, f"rank{{os.environ['RANK']}}.pt")
"""


def test_ddp_time_budget_keeps_ranks_in_step(workdir):
    """Each process times its own steps; unsynchronised, their schedules and stopping steps differed, the weights
    drifted apart and one rank died in an all-reduce the other never joined."""
    (workdir / "per_rank.py").write_text(PER_RANK.format(root=ROOT, train=os.path.join(ROOT, "train.py")))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(workdir / "per_rank.py")]
    p = run(torchrun, *TINY, "--max_iters=100000", "--max_seconds=4", "--eval_interval=50",
            "--gradient_accumulation_steps=2", "--dropout=0.1", "--out_dir=ddp", cwd=workdir, timeout=240)
    assert "2 process(es)" in p.stdout
    r0, r1 = (torch.load(workdir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    # dropout masks differ between ranks (different seeds), while the data draws and initial weights are shared
    assert not torch.equal(r0["draw"], r1["draw"])
    ckpt = torch.load(workdir / "ddp" / "ckpt.pt", weights_only=True)
    assert len(ckpt["rng"]["torch"]) == 2 and not torch.equal(*ckpt["rng"]["torch"])
    assert ckpt["iter_num"] > 0 and ckpt["train_time"] >= 4


def test_sampler_draws_the_last_window():
    """The last start whose targets fit is len - block_size - 1; the sampler used to stop one short of it."""
    data = np.arange(10, dtype=np.uint16)
    ix = sample_starts(data, 8, (2000,), torch.Generator().manual_seed(0))
    assert set(ix.tolist()) == {0, 1}
    x, y = get_batch(data, torch.tensor([1]), 8, torch.device("cpu"))
    assert x[0].tolist() == list(range(1, 9)) and y[0].tolist() == list(range(2, 10))


def test_a_bin_of_exactly_one_window_trains(workdir):
    ids = np.fromfile(workdir / "data" / "tiny" / "val.bin", dtype=np.uint16)[:33]  # block_size 32 + 1 target
    ids.tofile(workdir / "data" / "tiny" / "val.bin")
    p = run("train.py", *TINY, "--max_iters=2", "--eval_interval=2", "--out_dir=out", cwd=workdir)
    assert "step 2:" in p.stdout


def test_eval_only_after_resume_always_evaluates(workdir):
    run("train.py", *TINY, "--max_iters=7", "--eval_interval=5", "--out_dir=out", cwd=workdir)
    p = run("train.py", *TINY, "--max_iters=20", "--eval_interval=5", "--out_dir=out", "--resume", "--eval_only",
            cwd=workdir)
    assert "resumed from out/ckpt.pt at iter 7" in p.stdout and list(logged(p.stdout, "step")) == [7]
    assert torch.load(workdir / "out" / "ckpt.pt", weights_only=True)["iter_num"] == 7  # nothing was trained


def test_peak_flops_matches_whole_names():
    assert peak_flops_of("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_of("NVIDIA H100 NVL") == 835e12 and peak_flops_of("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_of("NVIDIA L40") == 181e12 and peak_flops_of("NVIDIA L40S") == 362e12
    assert peak_flops_of("NVIDIA L4") == 121e12 and peak_flops_of("NVIDIA A10G") == 70e12
    assert peak_flops_of("NVIDIA A100-SXM4-80GB") == 312e12 and peak_flops_of("NVIDIA GH200 480GB") == 989e12
    assert peak_flops_of("NVIDIA B200") == 2250e12 and peak_flops_of("AMD Instinct MI300X") == 1307e12
    assert peak_flops_of("NVIDIA H200") == 989e12 and peak_flops_of("NVIDIA GeForce RTX 4090") == 165e12
    assert peak_flops_of("NVIDIA T4") is None and peak_flops_of("NVIDIA L4000") is None


def test_torch_compile_smoke(workdir):
    p = run("train.py", *TINY, "--max_iters=4", "--eval_interval=4", "--log_interval=2", "--compile=True",
            "--out_dir=out", cwd=workdir)
    assert "compile=True" in p.stdout and "step 4:" in p.stdout
    ckpt = torch.load(workdir / "out" / "ckpt.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["model"])


def test_wandb_offline_and_resume_continues_the_same_run(workdir):
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(workdir), "WANDB_SILENT": "true"}
    p = run("train.py", *TINY, "--max_iters=10", "--wandb_log=True", "--out_dir=out", cwd=workdir, env=env)
    runs = list((workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), p.stdout
    run_id = torch.load(workdir / "out" / "ckpt.pt", weights_only=True)["wandb_id"]
    assert run_id and runs[0].name.endswith(f"-{run_id}")
    run("train.py", *TINY, "--max_iters=20", "--wandb_log=True", "--out_dir=out", "--resume", cwd=workdir, env=env)
    runs = sorted((workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # offline: one folder per process
    assert torch.load(workdir / "out" / "ckpt.pt", weights_only=True)["wandb_id"] == run_id


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


def test_init_from_a_llama_checkpoint_upcycles_a_moe(workdir):
    """--init_from a checkpoint of another model file loads it by name (adapt_weights): a MoE config
    started from a dense Llama computes the Llama's function at step 0 (every expert a copy of its FFN)."""
    shape = ["--n_layer=2", "--n_head=2", "--n_kv_head=1", "--n_embd=32", "--ffn_hidden=88"]
    args = [a for a in TINY if not a.startswith(("--model", "--n_layer", "--n_head", "--n_embd"))] + shape
    dense = run("train.py", *args, "--model=llama", "--out_dir=dense", cwd=workdir).stdout
    moe = run("train.py", *args, "--model=moe", "--n_expert=4", "--init_from=dense/ckpt.pt", "--max_iters=0",
              "--out_dir=moe", cwd=workdir).stdout
    assert logged(moe, "step")[0] == logged(dense, "step")[20]
    p = run("train.py", *args, "--model=moe", "--n_expert=4", "--n_layer=3", "--init_from=dense/ckpt.pt",
            "--out_dir=moe3", cwd=workdir, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "cannot start models/moe.py from dense/ckpt.pt, a models/llama.py checkpoint: " in p.stderr
    assert "n_layer" in p.stderr
