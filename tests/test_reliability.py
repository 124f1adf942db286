"""Reliability (issue 4): exact resume after SIGKILL, clean stops on SIGINT/SIGTERM, checkpoints that a crash cannot
corrupt and that load the same whichever way they were written, non-finite losses, and a catalogue of bad inputs
that each get one clear line. Every fault is injected here, by the test: a signal, a corrupted file, or a small
wrapper script that patches torch.save or a model's forward before running train.py unchanged."""

import argparse
import errno
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, copy_repo, corpus_text, run, write_char_dataset

TRAIN = os.path.join(ROOT, "train.py")
# A run long enough to interrupt at an arbitrary point (its steps take a few ms), with dropout so that the RNG
# state matters, logging every step.
LONG = [*TINY, "--max_iters=300", "--lr_decay_iters=300", "--eval_interval=10", "--log_interval=1", "--dropout=0.1"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One working directory with data/tiny for the whole module (tests use separate out_dirs in it)."""
    d = tmp_path_factory.mktemp("reliability")
    write_char_dataset(d / "data" / "tiny", corpus_text(50_000))
    return d


@pytest.fixture(scope="module")
def baseline(shared):
    """The uninterrupted run every interrupted one must reproduce: its log and its final checkpoint."""
    out = run("train.py", *LONG, "--out_dir=baseline", cwd=shared).stdout
    return out, torch.load(shared / "baseline" / "ckpt.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny_ckpt(shared):
    """A small finished checkpoint (gpt2, block_size 32) to corrupt, rewrite and load in other ways."""
    run("train.py", *TINY, "--max_iters=2", "--eval_interval=2", "--out_dir=tiny", cwd=shared)
    return shared / "tiny" / "ckpt.pt"


def logged_losses(out):
    """{('iter', n): train step loss, ('train', n) / ('val', n): eval losses} as printed by train.py."""
    found = {("iter", int(m[1])): m[2] for m in re.finditer(r"^iter (\d+): loss ([\d.]+),", out, re.M)}
    for m in re.finditer(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out, re.M):
        found[("train", int(m[1]))], found[("val", int(m[1]))] = m[2], m[3]
    return found


def assert_same(a, b):
    """Nested dicts and lists of tensors and plain values (an optimizer's state_dict), bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, (dict, list, tuple)):
        assert type(a) is type(b) and len(a) == len(b) and (a.keys() == b.keys() if isinstance(a, dict) else True)
        for x, y in (((a[k], b[k]) for k in a) if isinstance(a, dict) else zip(a, b)):
            assert_same(x, y)
    else:
        assert a == b


def assert_continues_exactly(baseline, resumed_out, resumed_ckpt, at):
    """From iteration `at` on, the resumed run logs the same losses as the uninterrupted one and ends with
    bitwise the same weights and optimizer state (CPU float32: no tolerance)."""
    base_out, base_ckpt = baseline
    expected = {k: v for k, v in logged_losses(base_out).items() if k[1] > at or k[0] != "iter" and k[1] >= at}
    assert sum(k[0] == "iter" for k in expected) == 300 - at and logged_losses(resumed_out) == expected
    ckpt = torch.load(resumed_ckpt, weights_only=True)
    assert ckpt["iter_num"] == 300 and ckpt["model"].keys() == base_ckpt["model"].keys()
    assert all(torch.equal(ckpt["model"][k], base_ckpt["model"][k]) for k in ckpt["model"])
    assert_same(ckpt["optimizer"], base_ckpt["optimizer"])


LAUNCHED = []


@pytest.fixture(autouse=True)
def no_run_outlives_its_test():
    yield
    for p in LAUNCHED:
        if p.poll() is None:
            p.kill()
            p.wait()


def launch(cmd, args, cwd, log):
    """Start a run in the background with its output going to `log` (so the test can watch it)."""
    cmd = [sys.executable, TRAIN] if cmd == "train.py" else cmd
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        LAUNCHED.append(subprocess.Popen(cmd + list(args), cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT))
    return LAUNCHED[-1]


def wait_for(condition, proc, timeout=60):
    t0 = time.time()
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the test could interrupt it"
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.005)


def with_fault(tmp, patch):
    """A wrapper that patches a fault into torch or a model, then runs train.py itself, unchanged."""
    script = tmp / f"train_with_fault_{abs(hash(patch))}.py"
    script.write_text(f"import runpy, sys\nsys.path.insert(0, {ROOT!r})\nimport torch\n{textwrap.dedent(patch)}\n"
                      f"runpy.run_path({TRAIN!r}, run_name='__main__')\n")
    return [sys.executable, str(script)]


def one_line_error(p):
    """Non-zero exit, exactly one line on stderr (starting 'error: '), no traceback; returns that line."""
    assert p.returncode not in (0, None) and "Traceback" not in p.stderr + p.stdout, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# Exact resume after SIGKILL; clean stops on SIGINT and SIGTERM


# Every optimizer's state resumes exactly; Sophia refreshes its Hessian estimate every 3 steps, so the checkpoints
# (every 10) fall between refreshes and the estimate must come from the checkpoint. "recipe": label smoothing, the
# dropout schedule and both curriculum ramps, killed inside the ramps (they end at iteration 150).
WITH_OPTIMIZER = {"adamw": [], "lion": ["--optimizer=lion", "--learning_rate=3e-4"],
                  "sophia": ["--optimizer=sophia", "--hessian_interval=3"], "muon": ["--optimizer=muon"],
                  "recipe": ["--label_smoothing=0.1", "--dropout_schedule=(0.2,0.0)", "--seq_warmup_iters=150",
                             "--batch_warmup_iters=150", "--batch_warmup_start=1"]}


@pytest.fixture(scope="module")
def baselines(shared, baseline):
    """The uninterrupted run with each optimizer (adamw's is `baseline`), each made when first needed."""
    runs = {"adamw": baseline}

    def get(optimizer):
        if optimizer not in runs:
            out_dir = f"baseline_{optimizer}"
            out = run("train.py", *LONG, *WITH_OPTIMIZER[optimizer], f"--out_dir={out_dir}", cwd=shared).stdout
            runs[optimizer] = out, torch.load(shared / out_dir / "ckpt.pt", weights_only=True)
        return runs[optimizer]
    return get


@pytest.mark.parametrize("optimizer", list(WITH_OPTIMIZER))
def test_sigkill_at_an_arbitrary_moment_then_resume_matches_the_uninterrupted_run(shared, baselines, optimizer):
    args, out_dir = [*LONG, *WITH_OPTIMIZER[optimizer]], f"killed_{optimizer}"
    ckpt = shared / out_dir / "ckpt.pt"
    p = launch("train.py", [*args, f"--out_dir={out_dir}"], shared, shared / f"{out_dir}.log")
    wait_for(ckpt.exists, p)
    delay = random.uniform(0, 0.2)
    time.sleep(delay)  # anywhere after the first checkpoint: mid-step, mid-eval or mid-checkpoint-write
    p.kill()
    assert p.wait() == -signal.SIGKILL, f"killed {delay:.3f} s after the first checkpoint"
    at = torch.load(ckpt, weights_only=True)["iter_num"]
    assert 10 <= at < 300 and at % 10 == 0, f"killed {delay:.3f} s after the first checkpoint"
    resumed = run("train.py", *args, f"--out_dir={out_dir}", "--resume", cwd=shared).stdout
    assert f"resumed from {out_dir}/ckpt.pt at iter {at}" in resumed
    assert_continues_exactly(baselines(optimizer), resumed, ckpt, at)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_exits_0_and_the_printed_command_resumes_exactly(shared, baseline, sig):
    out_dir, log = f"stopped_{sig.name}", shared / f"{sig.name}.log"
    p = launch("train.py", [*LONG, f"--out_dir={out_dir}"], shared, log)
    wait_for((shared / out_dir / "ckpt.pt").exists, p)
    p.send_signal(sig)
    if sig == signal.SIGTERM:
        p.send_signal(sig)  # a scheduler and torchrun may both send one: the save still happens
    assert p.wait(timeout=60) == 0
    m = re.search(r"^saved (\S+) at iter (\d+); continue with: python (train\.py .*)$", log.read_text(), re.M)
    assert m and m[1] == f"{out_dir}/ckpt.pt", log.read_text()
    at = int(m[2])
    assert 10 <= at < 300 and torch.load(shared / m[1], weights_only=True)["iter_num"] == at
    command = shlex.split(m[3])  # exactly what the message tells the user to run
    assert command[0] == "train.py" and command[-1] == "--resume"
    resumed = run("train.py", *command[1:], cwd=shared).stdout
    assert_continues_exactly(baseline, resumed, shared / m[1], at)


SLOW_STEPS = """
    import time, models.gpt2 as m
    calls, forward = [0], m.Model.forward
    def slow_forward(self, *args, **kwargs):
        if self.training:
            calls[0] += 1
            if calls[0] > 4:  # after the first checkpoint (iter 4), each step takes a second
                time.sleep(1.0)
        return forward(self, *args, **kwargs)
    m.Model.forward = slow_forward
"""


def test_second_ctrl_c_exits_at_once_and_leaves_the_last_checkpoint_untouched(shared):
    ckpt, log = shared / "twice" / "ckpt.pt", shared / "twice.log"
    p = launch(with_fault(shared, SLOW_STEPS), [*TINY, "--eval_interval=4", "--out_dir=twice"], shared, log)
    wait_for(ckpt.exists, p)
    before = ckpt.read_bytes()
    p.send_signal(signal.SIGINT)
    wait_for(lambda: "stopping after this step" in log.read_text(), p)
    p.send_signal(signal.SIGINT)  # mid-step: the first one is still waiting for the step to end
    assert p.wait(timeout=30) == 130
    assert "saved" not in log.read_text() and "Traceback" not in log.read_text()
    assert ckpt.read_bytes() == before and torch.load(ckpt, weights_only=True)["iter_num"] == 4


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint writes that fail, and checkpoints written in different ways


FULL_DISK = """
    import errno, io, os
    save, calls = torch.save, [0]
    def half_then_full(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            return save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        save(obj, buf, *args, **kwargs)
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(half)
        else:
            f.write(half)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # the disk fills up half-way through the 2nd write
    torch.save = half_then_full
"""


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact(shared):
    ckpt = shared / "fulldisk" / "ckpt.pt"
    p = run(with_fault(shared, FULL_DISK), *TINY, "--eval_interval=5", "--out_dir=fulldisk", cwd=shared, check=False)
    line = one_line_error(p)
    assert line == (f"error: could not write fulldisk/ckpt.pt ({os.strerror(errno.ENOSPC)}); the previous checkpoint "
                    f"is intact; free some space or use another --out_dir")
    assert torch.load(ckpt, weights_only=True)["iter_num"] == 5 and not os.path.exists(f"{ckpt}.tmp")
    p = run("train.py", *TINY, "--eval_interval=5", "--max_iters=10", "--out_dir=fulldisk", "--resume", cwd=shared)
    assert "resumed from fulldisk/ckpt.pt at iter 5" in p.stdout and "step 10:" in p.stdout


def test_a_compiled_runs_checkpoint_resumes_in_a_plain_run(shared):
    run("train.py", *TINY, "--max_iters=4", "--eval_interval=2", "--compile=True", "--out_dir=compiled", cwd=shared)
    keys = torch.load(shared / "compiled" / "ckpt.pt", weights_only=True)["model"].keys()
    assert not any(k.startswith(("module.", "_orig_mod.")) or "._orig_mod." in k for k in keys)
    p = run("train.py", *TINY, "--max_iters=6", "--eval_interval=2", "--compile=False", "--out_dir=compiled",
            "--resume", cwd=shared)
    assert "resumed from compiled/ckpt.pt at iter 4" in p.stdout and "compile=False" in p.stdout
    assert "step 6:" in p.stdout


def test_a_ddp_checkpoint_samples_and_resumes_in_one_process(shared):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TRAIN]
    args = [*TINY, "--gradient_accumulation_steps=2", "--eval_interval=2"]
    run(torchrun, *args, "--max_iters=4", "--out_dir=ddp", cwd=shared)
    ckpt = torch.load(shared / "ddp" / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 4 and not any(k.startswith("module.") for k in ckpt["model"])
    p = run("sample.py", "--ckpt=ddp", "--max_new_tokens=20", "--num_samples=1", "--device=cpu", cwd=shared)
    assert len(p.stdout) >= 20
    p = run("train.py", *args, "--max_iters=6", "--out_dir=ddp", "--resume", cwd=shared)
    assert "resumed from ddp/ckpt.pt at iter 4" in p.stdout and "1 process(es)" in p.stdout and "step 6:" in p.stdout


def test_prefixed_state_dicts_from_other_trainers_load(shared, tiny_ckpt):
    """Checkpoints saved from a DDP- or compile-wrapped model (as nanoGPT may write them) load without edits."""
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["model"] = {f"module._orig_mod.{k}": v for k, v in ckpt["model"].items()}
    torch.save(ckpt, shared / "prefixed.pt")
    p = run("sample.py", "--ckpt=prefixed.pt", "--max_new_tokens=5", "--num_samples=1", "--device=cpu", cwd=shared)
    assert p.stdout.strip()
    run("train.py", *TINY, "--init_from=prefixed.pt", "--max_iters=2", "--eval_interval=2", "--out_dir=from_prefixed",
        cwd=shared)
    new = torch.load(shared / "from_prefixed" / "ckpt.pt", weights_only=True)["model"]
    assert new.keys() == torch.load(tiny_ckpt, weights_only=True)["model"].keys()


# ----------------------------------------------------------------------------------------------------------------
# Non-finite losses


def fault_at_steps(kind, steps):
    """Patch gpt2's forward: on the given training steps (1-based) the loss is NaN ('loss'), or the loss stays
    finite and its gradient is NaN ('grad'), which would poison the weights."""
    return f"""
    import models.gpt2 as m
    class NanGrad(torch.autograd.Function):
        forward = staticmethod(lambda ctx, x: x.clone())
        backward = staticmethod(lambda ctx, g: g * float("nan"))
    calls, forward = [0], m.Model.forward
    def faulty_forward(self, *args, **kwargs):
        logits, loss = forward(self, *args, **kwargs)
        if self.training:
            calls[0] += 1
            if calls[0] in {set(steps)!r}:
                loss = loss * float("nan") if {kind!r} == "loss" else NanGrad.apply(loss)
        return logits, loss
    m.Model.forward = faulty_forward
    """


def test_nan_loss_stops_naming_the_iteration_and_the_intact_last_checkpoint(shared):
    p = run(with_fault(shared, fault_at_steps("loss", {13})), *TINY, "--eval_interval=5", "--out_dir=nanloss",
            cwd=shared, check=False)
    assert one_line_error(p) == (
        "error: loss is nan at iter 13; the last good checkpoint, nanloss/ckpt.pt (iter 10), is intact: --resume "
        "from it with a lower learning_rate, or pass --skip_nonfinite to skip such steps")
    ckpt = torch.load(shared / "nanloss" / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 10 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    p = run("train.py", *TINY, "--eval_interval=5", "--out_dir=nanloss", "--resume", "--learning_rate=5e-4", cwd=shared)
    assert "resumed from nanloss/ckpt.pt at iter 10" in p.stdout and "step 20:" in p.stdout


def test_nan_gradients_never_reach_a_checkpoint(shared):
    # step 10 poisons the weights with a finite loss; the checkpoint due right after it must not be written
    p = run(with_fault(shared, fault_at_steps("grad", {10})), *TINY, "--eval_interval=5", "--out_dir=nangrad",
            cwd=shared, check=False)
    assert one_line_error(p) == (
        "error: the weights are not finite at iter 10 (a NaN/inf gradient?); the last good checkpoint, "
        "nangrad/ckpt.pt (iter 5), is intact: --resume from it with a lower learning_rate or grad_clip")
    ckpt = torch.load(shared / "nangrad" / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 5 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.parametrize("dtype", ["float32", "float16"])  # float16 runs the GradScaler path
def test_skip_nonfinite_skips_and_counts(shared, dtype):
    out_dir = f"skip_{dtype}"
    p = run(with_fault(shared, fault_at_steps("loss", {3, 7})), *TINY, "--max_iters=10", "--eval_interval=5",
            "--skip_nonfinite", f"--dtype={dtype}", f"--out_dir={out_dir}", cwd=shared)
    assert "iter 3: loss nan, step skipped (1 so far)" in p.stdout
    assert "iter 7: loss nan, step skipped (2 so far)" in p.stdout and "skipped 2" in p.stdout
    ckpt = torch.load(shared / out_dir / "ckpt.pt", weights_only=True)
    assert ckpt["iter_num"] == 10 and ckpt["skipped"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# ----------------------------------------------------------------------------------------------------------------
# The catalogue of bad inputs: each exits non-zero with one line that says what to do, and no traceback.
# Every case runs in its own copy of data/tiny; `setup(d, ckpt)` breaks something there (ckpt: tiny_ckpt) and may
# return a different command. All cases start together (a few at a time), and each test checks its own result.

NO_NETWORK = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}


def edit_ckpt(edit, name="out/ckpt.pt"):
    """setup: a copy of tiny_ckpt at d/name, changed by edit(ckpt dict)."""
    def setup(d, ckpt):
        c = torch.load(ckpt, weights_only=True)
        edit(c)
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save(c, d / name)
    return setup


def write(name, data, text=True):
    def setup(d, ckpt):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(data) if text else (d / name).write_bytes(data)
    return setup


def halve(src, dst):
    def setup(d, ckpt):
        data = (d / src).read_bytes() if src != "ckpt" else ckpt.read_bytes()
        (d / dst).parent.mkdir(parents=True, exist_ok=True)
        (d / dst).write_bytes(data[: len(data) // 2])
    return setup


def tokens(name, ids):
    return lambda d, ckpt: np.array(ids, dtype=np.uint16).tofile(d / "data" / "tiny" / name)


class Payload:
    """Unpickling this calls os.makedirs(path), as a malicious checkpoint would run code: weights_only must refuse."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


def pickled(make, name):
    """setup: torch.save a checkpoint-shaped dict holding an arbitrary Python object, make(d)."""
    return lambda d, ckpt: torch.save({"model": make(d), "model_name": "gpt2", "model_config": {}}, d / name)


def broken_model_file(d, ckpt):
    repo = copy_repo(d / "repo")
    (repo / "models" / "broken.py").write_text("import torch\n\nclass Config:\n    block_size: int = 8\n")
    shutil.move(d / "data", repo / "data")
    return [sys.executable, str(repo / "train.py")], repo


def big_alphabet(d, ckpt):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 72_100) if not 0xD800 <= c <= 0xDFFF][:70_000]  # no surrogates
    (d / "big.txt").write_text("".join(chars), encoding="utf-8")


CUDA_ARG = "--device=cuda" if not torch.cuda.is_available() else "--device=tpu"
CUDA_MSG = r"--device=cuda but CUDA is not available here; use --device=cpu" if not torch.cuda.is_available() \
    else r"--device=tpu is not one of"
SAMPLE = ["--max_new_tokens=5", "--num_samples=1", "--device=cpu"]
CASES = [  # (id, script, args (train.py cases get TINY first), setup, env, message regex)
    ("unknown key, with the closest valid one", "train.py", ["--n_layr=3"], None, None,
     r"unknown setting 'n_layr' for train.py with models/gpt2.py; did you mean 'n_layer'\? valid keys: model, "),
    ("wrong value type", "train.py", ["--n_layer=three"], None, None, r"n_layer='three' has type str, expected int$"),
    ("config file not found", "train.py", ["no/such/config.py"], None, None,
     r"config file no/such/config.py not found$"),
    ("a setting written without =", "train.py", ["--n_layer", "3"], None, None,
     r"config file 3 not found; settings are written --key=value$"),
    ("config file with a syntax error", "train.py", ["bad.py"], write("bad.py", "n_layer = 4\nn_head = (\n"), None,
     r"config file bad.py, line 2: SyntaxError: "),
    ("config file that raises", "train.py", ["bad.py"], write("bad.py", "n_layer = 4\nn_head = n_layer // undefined\n"),
     None, r"config file bad.py, line 2: NameError: name 'undefined' is not defined$"),
    ("unknown model name", "train.py", ["--model=nosuchmodel"], None, None,
     r"unknown model 'nosuchmodel': there is no models/nosuchmodel.py \(have: .*gpt2, .*llama"),
    ("model file without the interface", "train.py", ["--model=broken"], broken_model_file, {"PYTHONPATH": ""},
     r"models/broken.py does not follow the model interface \(missing Model\); see 'The model interface' in README"),
    ("n_embd not divisible by n_head", "train.py", ["--n_embd=30", "--n_head=4"], None, None,
     r"invalid model config for models/gpt2.py: n_embd \(30\) must be divisible by n_head \(4\)$"),
    ("n_head not divisible by n_kv_head (llama)", "train.py", ["--model=llama", "--n_head=4", "--n_kv_head=3"],
     None, None,
     r"invalid model config for models/llama.py: n_head \(4\) must be a multiple of n_kv_head \(3\)$"),
    ("block_size beyond a checkpoint's learned positions", "train.py", ["--init_from=base.pt", "--block_size=64"],
     lambda d, ckpt: shutil.copy(ckpt, d / "base.pt"), None,
     r"the weights in base.pt do not fit models/gpt2.py as configured here: size mismatch for transformer.wpe.weight"
     r": .*; the checkpoint was trained with block_size=32$"),
    ("vocab_size below the dataset's", "train.py", ["--vocab_size=10"], None, None,
     r"vocab_size=10 is smaller than the dataset's \d+; leave vocab_size out"),
    ("unknown schedule", "train.py", ["--schedule=cosin"], None, None,
     r"schedule='cosin' is not one of 'cosine', 'noam', 'constant', 'wsd', 'cosine_restarts'$"),
    ("eval_interval 0", "train.py", ["--eval_interval=0"], None, None, r"eval_interval=0 must be at least 1$"),
    ("noam schedule without warmup", "train.py", ["--schedule=noam", "--warmup_iters=0"], None, None,
     r"schedule='noam' needs warmup_iters >= 1 \(its peak is at step warmup_iters"),
    ("a large dataset missing is not prepared on the fly", "train.py", ["--dataset=openwebtext"], None, None,
     r"dataset 'openwebtext' not found \(data/openwebtext/meta.json is missing\); prepare it first \(it is too large "
     r"to prepare on the fly\): python \S*prepare/openwebtext.py$"),
    ("dataset missing, prepare script offline", "train.py", ["--dataset=shakespeare_char"], None, NO_NETWORK,
     r"could not download https://\S+ \(URLError\); fetch it elsewhere and run `python \S*prepare/shakespeare_char.py "
     r"--input PATH`"),
    ("dataset missing, no prepare script", "train.py", ["--dataset=nothere"], None, None,
     r"dataset 'nothere' not found \(data/nothere/meta.json is missing\) and there is no \S*prepare/nothere.py to make "
     r"it; write data/nothere/\{train,val\}.bin and meta.json as prepare/bins.py does, or pick one of: "
     r".*shakespeare_char"),
    ("empty bin", "train.py", [], tokens("val.bin", []), None,
     r"data/tiny/val.bin has 0 tokens, too few for block_size 32; use a smaller block_size or more data$"),
    ("bin too short for block_size", "train.py", [], tokens("train.bin", range(20)), None,
     r"data/tiny/train.bin has 20 tokens, too few for block_size 32"),
    ("bin of odd length", "train.py", [], lambda d, ckpt: open(d / "data" / "tiny" / "train.bin", "ab").write(b"x"),
     None, r"data/tiny/train.bin has an odd number of bytes, so it is not a uint16 token file"),
    ("token ids >= vocab_size in a bin", "train.py", [], tokens("val.bin", [1, 2, 500] * 100), None,
     r"data/tiny/val.bin holds token id 500 but vocab_size is \d+; the bin and meta.json disagree, re-prepare$"),
    ("meta.json missing", "train.py", [], lambda d, ckpt: os.remove(d / "data" / "tiny" / "meta.json"), None,
     r"^error: data/tiny/meta.json is missing and there is no \S*prepare/tiny.py to make it; write "),
    ("meta.json not JSON", "train.py", [], write("data/tiny/meta.json", "{vocab_size: 65"), None,
     r"data/tiny/meta.json is unreadable \(Expecting property name .*\); rewrite it$"),
    ("meta.json inconsistent", "train.py", [], write("data/tiny/meta.json", '{"vocab_size": 65, "tokenizer": "char", '
                                                     '"chars": "abc"}'), None,
     r"data/tiny/meta.json is inconsistent: it lists 3 chars for vocab_size 65; rewrite it$"),
    ("--resume without a checkpoint", "train.py", ["--resume", "--out_dir=out"], None, None,
     r"checkpoint out/ckpt.pt not found; train one first"),
    ("--resume from a truncated checkpoint", "train.py", ["--resume", "--out_dir=out"], halve("ckpt", "out/ckpt.pt"),
     None, r"checkpoint out/ckpt.pt is truncated or corrupt \(PytorchStreamReader failed .*\); use an intact copy"),
    ("--resume from a checkpoint of another model", "train.py", ["--resume", "--out_dir=out"],
     edit_ckpt(lambda c: c.update(model_name="llama")), None,
     r"out/ckpt.pt holds a 'llama' model, not 'gpt2'; use another --out_dir$"),
    ("--resume with an incompatible config", "train.py", ["--resume", "--out_dir=out", "--n_layer=3"],
     edit_ckpt(lambda c: None), None,
     r"--resume with a different model config than out/ckpt.pt: n_layer=2 \(checkpoint\) vs 3; pass the checkpoint's "
     r"values, or use another --out_dir for a new run$"),
    ("--resume from a weights-only checkpoint", "train.py", ["--resume", "--out_dir=out"],
     edit_ckpt(lambda c: [c.pop(k) for k in ("optimizer", "rng")]), None,
     r"out/ckpt.pt has weights but no training state \(optimizer, rng\); start a new run from its weights with "
     r"--init_from=out/ckpt.pt$"),
    ("--resume with an optimizer state that does not fit", "train.py", ["--resume", "--out_dir=out"],
     edit_ckpt(lambda c: c["optimizer"]["param_groups"][1]["params"].pop()), None,
     r"the optimizer state in out/ckpt.pt does not fit this model \(.*\); start a new run from its weights"),
    ("init_from a malicious pickle", "train.py", ["--init_from=evil.pt"],
     pickled(lambda d: Payload(str(d / "pwned")), "evil.pt"), None,
     r"checkpoint evil.pt holds a pickled os.makedirs, which weights_only loading refuses; it was not written by "
     r"train.py"),
    ("init_from a bare state dict", "train.py", ["--init_from=sd.pt"],
     lambda d, ckpt: torch.save(torch.load(ckpt, weights_only=True)["model"], d / "sd.pt"), None,
     r"sd.pt is not a nanoevo checkpoint"),
    ("--device=cuda without CUDA", "train.py", [CUDA_ARG], None, None, CUDA_MSG),
    ("grad accumulation not divisible by the world size", "train.py", ["--gradient_accumulation_steps=3"], None,
     {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
     r"gradient_accumulation_steps=3 must be divisible by the number of processes \(2\); use a multiple of 2$"),
    ("out_dir not writable", "train.py", ["--out_dir=afile/sub"], write("afile", "not a directory"), None,
     r"out_dir afile/sub is not writable \(Not a directory\); choose another with --out_dir=$"),
    # sample.py
    ("sample: checkpoint missing", "sample.py", ["--ckpt=nothere", *SAMPLE], None, None,
     r"checkpoint nothere not found; train one first"),
    ("sample: checkpoint of random bytes", "sample.py", ["--ckpt=junk.pt", *SAMPLE],
     write("junk.pt", bytes(random.Random(0).randrange(256) for _ in range(4096)), text=False), None,
     r"checkpoint junk.pt is truncated or corrupt \(.*\); use an intact copy or train again$"),
    ("sample: a foreign pickle", "sample.py", ["--ckpt=ns.pt", *SAMPLE],
     pickled(lambda d: argparse.Namespace(lr=1), "ns.pt"),
     None, r"checkpoint ns.pt holds a pickled argparse.Namespace, which weights_only loading refuses"),
    ("sample: prompt characters outside the char vocabulary", "sample.py",
     ["--ckpt=c.pt", "--start=ROMEO ☃€", *SAMPLE],
     lambda d, ckpt: shutil.copy(ckpt, d / "c.pt"), None,
     r"prompt has characters outside the model's character vocabulary: '€☃'; use only characters that occur"),
    ("sample: empty prompt", "sample.py", ["--ckpt=c.pt", "--start=", *SAMPLE],
     lambda d, ckpt: shutil.copy(ckpt, d / "c.pt"), None, r"--start is empty; give at least one character or token$"),
    ("sample: prompt file missing", "sample.py", ["--ckpt=c.pt", "--start=FILE:nope.txt", *SAMPLE],
     lambda d, ckpt: shutil.copy(ckpt, d / "c.pt"), None, r"--start=FILE:nope.txt: no such file$"),
    ("sample: the checkpoint's model file is gone", "sample.py", ["--ckpt=out", *SAMPLE],
     edit_ckpt(lambda c: c.update(model_name="gone")), None, r"unknown model 'gone': there is no models/gone.py"),
    ("sample: a setting the model file no longer has", "sample.py", ["--ckpt=out", *SAMPLE],
     edit_ckpt(lambda c: c["model_config"].update(n_expert=4)), None,
     r"models/gpt2.py's Config has no field\(s\) n_expert; was the model file edited\?$"),
    ("sample: weights that do not fit the model file", "sample.py", ["--ckpt=out", *SAMPLE],
     edit_ckpt(lambda c: c["model"].pop("transformer.wpe.weight")), None,
     r"the weights in out do not fit models/gpt2.py as configured here: missing transformer.wpe.weight; was the model "
     r"file edited after training\?$"),
    ("sample: top_k 0", "sample.py", ["--ckpt=out", *SAMPLE, "--top_k=0"], None, None,
     r"--top_k=0 must be at least 1 \(1 is greedy; --top_k=None keeps every token\)$"),
    ("sample: negative temperature", "sample.py", ["--ckpt=out", *SAMPLE, "--temperature=-0.5"], None, None,
     r"--temperature=-0.5 must be 0 \(greedy\) or more$"),
    ("sample: top_p above 1", "sample.py", ["--ckpt=out", *SAMPLE, "--top_p=1.5"], None, None,
     r"--top_p=1.5 must be in \(0, 1\]"),
    ("sample: top_p 0", "sample.py", ["--ckpt=out", *SAMPLE, "--top_p=0"], None, None,
     r"--top_p=0 must be in \(0, 1\]"),
    ("sample: negative max_new_tokens", "sample.py", ["--ckpt=out", *SAMPLE, "--max_new_tokens=-3"], None, None,
     r"--max_new_tokens=-3 must be 0 or more$"),
    ("sample: a malformed option", "sample.py", ["--ckpt=out", "--num_samples=abc"], None, None,
     r"num_samples='abc' has type str, expected int$"),
    # prepare/
    ("prepare: vocabulary too large for uint16", "prepare/shakespeare_char.py", ["--input=big.txt", "--out_dir=dd"],
     big_alphabet, None, r"vocab_size 70000 does not fit in uint16 token bins \(max 65536 tokens\)$"),
    ("prepare: --input missing", "prepare/shakespeare_char.py", ["--input=nope.txt", "--out_dir=dd"], None, None,
     r"--input nope.txt: no such file$"),
    ("prepare: --input not UTF-8", "prepare/shakespeare_char.py", ["--input=latin1.txt", "--out_dir=dd"],
     write("latin1.txt", "café crème".encode("latin-1"), text=False), None,
     r"latin1.txt is not UTF-8 text \(byte 0xe9: invalid continuation byte\); convert it first"),
    ("prepare: offline without --input", "prepare/shakespeare_char.py", ["--out_dir=dd"], None, NO_NETWORK,
     r"could not download https://\S+ \(URLError\); fetch it elsewhere and run `python prepare/shakespeare_char.py "
     r"--input PATH` \(or save it as dd/input.txt\)$"),
    ("prepare: --val_fraction out of range", "prepare/text.py", ["--data_files=x.txt", "--val_fraction=1.5"], None,
     None, r"--val_fraction 1.5: must be between 0 and 1$"),
    ("prepare: GPT-2 tokenizer not cached, offline", "prepare/text.py", ["--data_files=x.txt", "--out_dir=dd"], None,
     {**NO_NETWORK, "TIKTOKEN_CACHE_DIR": "empty_cache"},
     r"could not load tiktoken's gpt2 encoding \(\w+\); it is downloaded once and cached: point TIKTOKEN_CACHE_DIR "
     r"at a folder that holds it$"),
]


def run_catalogue(base, ckpt, workers=3):
    """Run every case in its own directory under `base`; -> {id: CompletedProcess}."""
    def one(case):
        name, script, args, setup, env, _ = case
        d = base / re.sub(r"\W+", "_", name)
        shutil.copytree(base / "_data", d / "data")
        custom = setup(d, ckpt) if setup else None
        cmd, cwd = custom if isinstance(custom, tuple) else (script, d)
        return run(cmd, *(TINY if script == "train.py" else []), *args, cwd=cwd, env=env, check=False, timeout=120)

    write_char_dataset(base / "_data" / "tiny", corpus_text(50_000))
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip([c[0] for c in CASES], pool.map(one, CASES)))


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, tiny_ckpt):
    base = tmp_path_factory.mktemp("catalogue")
    return base, run_catalogue(base, tiny_ckpt)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(catalogue, case):
    line = one_line_error(catalogue[1][case[0]])
    assert re.search(case[5], line), line


def test_a_malicious_checkpoint_runs_no_code(catalogue):
    base, _ = catalogue
    case_dir = base / "init_from_a_malicious_pickle"
    assert (case_dir / "evil.pt").exists() and not (case_dir / "pwned").exists()
