"""--fsdp=True (common/fsdp.py): the units it finds without knowing the model, two FSDP processes on CPU (gloo) equal
to one process, exact resume after SIGKILL, a checkpoint that is the plain one-process file, and the one-line errors."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.fsdp import check_fsdp, shard
from conftest import ROOT, TINY, corpus_text, run, write_char_dataset
from models import gpt2, mamba, t5
from test_reliability import assert_same, logged_losses, one_line_error

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            os.path.join(ROOT, "train.py")]
# An FSDP run to interrupt: dropout, so every process's RNG state must come back; a checkpoint every 10 steps.
LONG = [*TINY, "--max_iters=40", "--lr_decay_iters=40", "--log_interval=1", "--dropout=0.1",
        "--gradient_accumulation_steps=2", "--fsdp=True"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    write_char_dataset(d / "data" / "tiny", corpus_text(50_000))
    return d


@pytest.fixture(scope="module")
def fsdp_run(shared):
    """An uninterrupted 2-process FSDP run: its log and its checkpoint."""
    out = run(TORCHRUN, *LONG, "--out_dir=fsdp", cwd=shared).stdout
    assert "2 process(es) with FSDP" in out
    return out, torch.load(shared / "fsdp" / "ckpt.pt", weights_only=True)


def sharded_units(model):
    """Shard model in this one process; -> the names of its FSDP units."""
    shard(model, torch.device("cpu"), torch.float32)
    return [n for n, m in model.named_modules() if isinstance(m, torch.distributed.fsdp.FSDPModule)]


def test_units_are_the_blocks_and_the_root_which_keeps_tied_tensors():
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        m = gpt2.Model(gpt2.Config(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=59))
        assert sharded_units(m) == ["", "transformer.h.0", "transformer.h.1"]
        assert m.transformer.wte.weight is m.lm_head.weight  # tied: one tensor, in the root
        m = t5.Model(t5.Config(block_size=32, vocab_size=59, src_len=16, d_model=32, n_head=2, d_kv=16, d_ff=64,
                               n_encoder_layer=2, n_decoder_layer=1))
        assert sharded_units(m) == ["", "encoder.0", "encoder.1", "decoder.0"]
        m = mamba.Model(mamba.Config(n_layer=1, d_model=32, vocab_size=59))
        assert sharded_units(m) == ["", "backbone.layers.0"]
        assert m.backbone.layers[0].mixer.A_log._no_weight_decay  # marks survive the new sharded Parameters
        # a block that shares a tensor with the rest of the model stays in the root
        m = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)]),
                                torch.nn.Linear(4, 4))
        m[1].weight = m[0][1].weight
        assert sharded_units(m) == ["", "0.0"] and m[1].weight is m[0][1].weight
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("model", [["--model=gpt2"], ["--model=llama", "--n_kv_head=1"]], ids=["gpt2", "llama"])
def test_two_fsdp_processes_match_one_process(shared, model):
    """Same global batch; 2 micro-steps per process (gradients reduce-scattered at each); clipping on (0.1 is below
    every gradient norm here), so the norm must be the whole model's, not a shard's."""
    args = [*TINY, *model, "--max_iters=6", "--eval_interval=6", "--gradient_accumulation_steps=4", "--dropout=0.0",
            "--grad_clip=0.1"]
    name = model[0].split("=")[1]
    run("train.py", *args, f"--out_dir=one_{name}", cwd=shared)
    p = run(TORCHRUN, *args, "--fsdp=True", f"--out_dir=fsdp_{name}", cwd=shared)
    assert "2 process(es) with FSDP" in p.stdout
    a, b = (torch.load(shared / d / "ckpt.pt", weights_only=True) for d in (f"one_{name}", f"fsdp_{name}"))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=1e-5, msg=k)
    assert a["iter_num"] == b["iter_num"] == 6


def descendants(pid):
    """The processes under pid (torchrun starts its workers in sessions of their own), from /proc."""
    kids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return kids + [g for k in kids for g in descendants(k)]


def kill_all(p):
    """SIGKILL the launcher and every worker at once, as a crashed node would stop them."""
    for pid in [*descendants(p.pid), p.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return p.wait()


def test_sigkill_then_resume_matches_the_uninterrupted_fsdp_run(shared, fsdp_run):
    ckpt = shared / "killed" / "ckpt.pt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(shared / "killed.log", "w") as log:
        p = subprocess.Popen([*TORCHRUN, *LONG, "--out_dir=killed"], cwd=shared, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while not ckpt.exists():
            assert p.poll() is None and time.time() - t0 < 120, (shared / "killed.log").read_text()
            time.sleep(0.005)
        time.sleep(random.uniform(0, 0.2))  # mid-step, mid-eval or mid-gather of the next checkpoint
        assert kill_all(p) == -signal.SIGKILL
    finally:
        if p.poll() is None:
            kill_all(p)
    at = torch.load(ckpt, weights_only=True)["iter_num"]
    assert 10 <= at < 40 and at % 10 == 0
    resumed = run(TORCHRUN, *LONG, "--out_dir=killed", "--resume", cwd=shared).stdout
    assert f"resumed from killed/ckpt.pt at iter {at}" in resumed
    base_out, base = fsdp_run
    expected = {k: v for k, v in logged_losses(base_out).items() if k[1] > at or k[0] != "iter" and k[1] >= at}
    assert sum(k[0] == "iter" for k in expected) == 40 - at and logged_losses(resumed) == expected
    end = torch.load(ckpt, weights_only=True)  # bitwise: weights and optimizer state (CPU float32)
    assert end["iter_num"] == 40 and end["model"].keys() == base["model"].keys()
    assert all(torch.equal(end["model"][k], base["model"][k]) for k in base["model"])
    assert_same(end["optimizer"], base["optimizer"])


def test_the_fsdp_checkpoint_is_the_plain_file(shared, fsdp_run):
    """No export step: ckpt.pt holds full tensors under the bare model's names, the tied head and embedding as one
    tensor, the optimizer state keyed as one process keys it; sample.py, --init_from and a one-process --resume
    read it."""
    ckpt = fsdp_run[1]
    plain = gpt2.Model(gpt2.Config(**ckpt["model_config"])).state_dict()
    assert ckpt["model"].keys() == plain.keys()
    assert all(ckpt["model"][k].shape == v.shape for k, v in plain.items())
    assert ckpt["model"]["lm_head.weight"].data_ptr() == ckpt["model"]["transformer.wte.weight"].data_ptr()
    assert sorted(ckpt["optimizer"]["state"]) == list(range(len(ckpt["optimizer"]["state"])))
    assert ckpt["model_name"] == "gpt2" and ckpt["config"]["fsdp"] is True and ckpt["iter_num"] == 40
    p = run("sample.py", "--ckpt=fsdp", "--max_new_tokens=20", "--num_samples=1", "--device=cpu", cwd=shared)
    assert len(p.stdout) >= 20
    p = run("train.py", *TINY, "--init_from=fsdp/ckpt.pt", "--max_iters=2", "--eval_interval=2", "--out_dir=tuned",
            cwd=shared)
    assert "step 2:" in p.stdout
    shutil.copytree(shared / "fsdp", shared / "one")
    args = [a for a in LONG if a != "--fsdp=True"]
    p = run("train.py", *args, "--max_iters=42", "--out_dir=one", "--resume", cwd=shared)
    assert "resumed from one/ckpt.pt at iter 40" in p.stdout and "1 process(es)" in p.stdout


def test_fsdp_without_torchrun_is_one_line(shared):
    p = run("train.py", *TINY, "--fsdp=True", "--out_dir=never", cwd=shared, check=False)
    assert "launch with torchrun" in one_line_error(p)


def test_fsdp_with_muon_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")  # as under torchrun: the optimizer is what is wrong
    with pytest.raises(SystemExit):
        check_fsdp({"fsdp": True, "optimizer": "muon"})
    assert capsys.readouterr().err.startswith("error: fsdp=True supports optimizer 'adamw', 'lion', 'sophia', not")
