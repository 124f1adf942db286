import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

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
    p = subprocess.run(cmd + list(args), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def copy_repo(dst):
    """A copy of the repo's code (no data, no outputs) for tests that edit files, such as the fork test."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "sample.py", "bench.py", "common.py"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), dst / name)
    for d in ("models", "prepare"):
        shutil.copytree(os.path.join(ROOT, d), dst / d, ignore=shutil.ignore_patterns("__pycache__"))
    return dst
