"""
Token data: data/<dataset>/{train,val}.bin (flat uint16 token ids, memory-mapped) and meta.json (vocab_size, the
tokenizer, and for characters the vocabulary itself), as the scripts in prepare/ write them; random batches of
windows; the tokenizer a meta names.
"""

import json
import os
import subprocess
import sys

import numpy as np
import torch

from common import die
from common.settings import ROOT


# Datasets small enough to prepare on the fly when train.py finds them missing (a 1 MB download, seconds). The
# others take minutes to hours of download: under torchrun the other processes would time out waiting for it, and
# nobody expects a training command to start a 50 GB download, so train.py names their prepare command instead.
AUTO_PREPARE = ("shakespeare_char", "shakespeare")


def load_meta(data_dir, dataset, auto_prepare=True):
    """Read data/<dataset>/meta.json, running prepare/<dataset>.py first if the data is missing and small."""
    meta_path = os.path.join(data_dir, "meta.json")
    script = os.path.join(ROOT, "prepare", f"{dataset}.py")
    script = os.path.relpath(script) if not os.path.relpath(script).startswith("..") else script
    if not os.path.isfile(meta_path) and auto_prepare and dataset in AUTO_PREPARE and os.path.isfile(script):
        print(f"data/{dataset} is missing: running {script}")
        if subprocess.run([sys.executable, script]).returncode != 0:
            sys.exit(1)  # the prepare script has printed its one-line reason
    if not os.path.isfile(meta_path):
        missing = f"{meta_path} is missing" if os.path.isdir(data_dir) else \
            f"dataset {dataset!r} not found ({meta_path} is missing)"
        if os.path.isfile(script):
            die(f"{missing}; prepare it first (it is too large to prepare on the fly): python {script}"
                if dataset not in AUTO_PREPARE else f"{missing}; run: python {script}")
        have = sorted(f[:-3] for f in os.listdir(os.path.dirname(script)) if f.endswith(".py")
                      and f not in ("__init__.py", "bins.py", "text.py"))
        die(f"{missing} and there is no {script} to make it; "
            f"write {data_dir}/{{train,val}}.bin and meta.json as prepare/bins.py does, "
            f"or pick one of: {', '.join(have)}")
    fix = f"rerun python {script}" if os.path.isfile(script) else "rewrite it"
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        vocab_size, tok, chars = meta["vocab_size"], meta["tokenizer"], meta.get("chars")
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # not JSON, not an object, or a key missing
        die(f"{meta_path} is unreadable ({'no ' + str(e) if isinstance(e, KeyError) else e}); {fix}")
    problem = ("vocab_size is not an int" if not isinstance(vocab_size, int) else
               f"tokenizer {tok!r} is not 'char' or 'gpt2'" if tok not in ("char", "gpt2") else
               f"it lists {len(chars or '')} chars for vocab_size {vocab_size}"
               if tok == "char" and len(chars or "") != vocab_size else None)
    if problem:
        die(f"{meta_path} is inconsistent: {problem}; {fix}")
    return meta


def tokenizer(meta):
    """(encode, decode) for a dataset's meta.json."""
    if meta["tokenizer"] == "char":
        stoi = {c: i for i, c in enumerate(meta["chars"])}

        def encode(s):
            bad = sorted(set(c for c in s if c not in stoi))
            if bad:
                die(f"prompt has characters outside the model's character vocabulary: {''.join(bad)!r}; "
                    f"use only characters that occur in the training text")
            return [stoi[c] for c in s]

        return encode, lambda ids: "".join(meta["chars"][i] for i in ids)
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode


def open_bin(data_dir, split, block_size, vocab_size):
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        die(f"{path} is missing; rerun the dataset's prepare script")
    n_bytes = os.path.getsize(path)
    if n_bytes % 2:
        die(f"{path} has an odd number of bytes, so it is not a uint16 token file; rerun the dataset's prepare script")
    if n_bytes // 2 < block_size + 1:  # one window needs block_size inputs and the target after them
        die(f"{path} has {n_bytes // 2} tokens, too few for block_size {block_size}; "
            f"use a smaller block_size or more data")
    data = np.memmap(path, dtype=np.uint16, mode="r")
    top = int(data[: 1 << 28].max())  # a full scan of the first 256M tokens catches a wrong tokenizer or meta
    if top >= vocab_size:
        die(f"{path} holds token id {top} but vocab_size is {vocab_size}; the bin and meta.json disagree, re-prepare")
    return data


def sample_starts(data, block_size, shape, generator):
    """Random window starts: the last one whose targets fit is len(data) - block_size - 1, so the exclusive bound
    is len(data) - block_size (as in nanoGPT)."""
    return torch.randint(len(data) - block_size, shape, generator=generator)


def get_batch(data, ix, block_size, device):
    x = torch.stack([torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix.tolist()])
    y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix.tolist()])
    if device.type == "cuda":  # pinned host memory lets the copy run asynchronously
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
