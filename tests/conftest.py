import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
sys.path.insert(0, ROOT)

# A tiny GPT-2 run: the settings every train.py test starts from.
TINY = ["--model=gpt2", "--dataset=tiny", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32",
        "--batch_size=4", "--max_iters=20", "--eval_interval=10", "--eval_iters=2", "--log_interval=5",
        "--warmup_iters=2", "--lr_decay_iters=20", "--sample_tokens=0", "--device=cpu"]


def corpus_text(n_chars=200_000):
    """Tiny Shakespeare when it is beside the repo, else a generated text with a similar alphabet."""
    if os.path.isfile(SHAKESPEARE):
        with open(SHAKESPEARE, encoding="utf-8") as f:
            return f.read()[:n_chars]
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "ROMEO:", "JULIET:", "love", "thou", "art", "my", "lord", "\n", "what", "say"]
    return " ".join(rng.choice(words, size=n_chars // 4))[:n_chars]


def write_char_dataset(data_dir, text):
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    os.makedirs(data_dir, exist_ok=True)
    n = int(0.9 * len(ids))
    ids[:n].tofile(os.path.join(data_dir, "train.bin"))
    ids[n:].tofile(os.path.join(data_dir, "val.bin"))
    with open(os.path.join(data_dir, "meta.json"), "w") as f:
        json.dump({"vocab_size": len(chars), "tokenizer": "char", "chars": "".join(chars)}, f)


@pytest.fixture
def workdir(tmp_path):
    """A working directory holding data/tiny (a small character-level dataset); scripts run from here."""
    write_char_dataset(tmp_path / "data" / "tiny", corpus_text(50_000))
    return tmp_path


def run(script, *args, cwd, env=None, check=True, timeout=300):
    """Run one of the repo's scripts as a user would; returns the CompletedProcess (stdout+stderr as text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = script if isinstance(script, list) else [sys.executable, os.path.join(ROOT, script)]
    # Its own process group, killed whole on a timeout: torchrun's workers must not outlive a failed test.
    with subprocess.Popen(cmd + list(args), cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def copy_repo(dst):
    """A copy of the repo's code (no data, no outputs) for tests that edit files, such as the fork test."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "sample.py", "bench.py"):
        shutil.copy(os.path.join(ROOT, name), dst / name)
    for d in ("common", "models", "prepare"):
        shutil.copytree(os.path.join(ROOT, d), dst / d, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


# ----------------------------------------------------------------------------------------------------------------
# Helpers shared by the model tests (test_gpt2, test_llama, test_mamba, test_moe, test_retnet, test_transformer,
# test_contract).


def rel_diff(a, b):
    """max |a - b| over the scale of b (max |b|), as a float."""
    return ((a - b).abs().max() / b.abs().max()).item()


def tokens(B, T, vocab_size, seed=1):
    """(B, T) random token ids below vocab_size, from a generator seeded with seed."""
    return torch.randint(0, vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def sharpen(model, scale=4.0):
    """Multiply parameters by scale (a number, or a function (name, p) -> factor) so logits are far from flat."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            factor = scale(name, p) if callable(scale) else scale
            if factor != 1.0:
                p.mul_(factor)
    return model


def scale_up(model, std, seed=0):
    """Seeded random weights: norm gains uniform in 0.5..1.5, the rest normal with std (or std(name)); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (std(name) if callable(std) else std))
    return model.eval()


def full_forward_greedy(model, idx, n, context=None):
    """Greedy reference without a cache: the last `context` tokens (default block_size) through the model each step."""
    context = context or model.config.block_size
    for _ in range(n):
        logits, _ = model(idx[:, -context:])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


def cached_step_logits(model, idx, prompt_len):
    """Logits of the cache path: prefill idx[:, :prompt_len] at start_pos=0, then the rest one token at a time."""
    model.setup_cache(idx.size(0), idx.device, next(model.parameters()).dtype)
    steps = [model(idx[:, :prompt_len], start_pos=0)[0]]
    steps += [model(idx[:, t:t + 1], start_pos=t)[0] for t in range(prompt_len, idx.size(1))]
    model.free_cache()
    return torch.cat(steps, dim=1)  # (B, T, V)


def bf16_autocast_run(model, idx, n=12):
    """Under CPU bf16 autocast: a forward with loss on idx, then greedy generate of n tokens from idx[:, :4]."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets=idx)
        gen = model.generate(idx[:, :4], n, temperature=0)
    return logits, loss, gen
