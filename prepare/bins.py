"""Helpers shared by the prepare scripts: fetch a text, write uint16 token bins and meta.json atomically.

Every prepare script writes data/<dataset>/{train,val}.bin (flat uint16 token ids, read with np.memmap) and
meta.json (vocab_size, tokenizer and, for character-level data, the vocabulary itself). Files appear under their
final names only when complete (common/checkpoints.py's atomic_write: a temporary name, fsync, then os.replace), so an interrupted run never leaves a
bin that train.py would accept.
"""

import json
import os
import sys
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import die  # noqa: E402,F401  (the prepare scripts import die from here)
from common.checkpoints import atomic_write  # noqa: E402,F401  (text.py uses it too)

UINT16_MAX = 65535


def read_text(input_path, url, out_dir, script):
    """The corpus as a string: from --input if given, else the copy cached at out_dir/input.txt by an earlier
    download (or put there by hand when offline), else downloaded from its canonical URL and cached."""
    cached = os.path.join(out_dir, "input.txt")
    path = input_path or (cached if os.path.isfile(cached) else None)
    if path:
        if not os.path.isfile(path):
            die(f"--input {path}: no such file")
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except UnicodeDecodeError as e:
            die(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x}: {e.reason}); convert it first, "
                f"e.g. iconv -f latin1 -t utf-8")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            text = r.read().decode("utf-8")
    except OSError as e:
        die(f"could not download {url} ({e.__class__.__name__}); fetch it elsewhere and run "
            f"`python {script} --input PATH` (or save it as {cached})")
    os.makedirs(out_dir, exist_ok=True)
    with atomic_write(cached, "w") as f:
        f.write(text)
    return text


def check_uint16(ids, vocab_size):
    """Token bins are uint16: refuse a vocabulary (or a token) that does not fit rather than wrap silently."""
    if vocab_size - 1 > UINT16_MAX:
        die(f"vocab_size {vocab_size} does not fit in uint16 token bins (max {UINT16_MAX + 1} tokens)")
    ids = np.asarray(ids)
    if ids.size and (ids.max() > UINT16_MAX or ids.min() < 0):
        die(f"token id {int(ids.max())} does not fit in uint16 token bins (max {UINT16_MAX})")
    return ids.astype(np.uint16)


def write_bin(path, ids, vocab_size):
    """Write token ids to `path` as flat uint16, atomically."""
    arr = check_uint16(ids, vocab_size)
    with atomic_write(path) as f:
        arr.tofile(f)


def write_meta(out_dir, meta):
    with atomic_write(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def split_write(out_dir, ids, meta, val_fraction=0.1):
    """Write the first (1 - val_fraction) of ids as train.bin and the rest as val.bin, plus meta.json."""
    os.makedirs(out_dir, exist_ok=True)
    n = len(ids)
    split = int(n * (1 - val_fraction))
    write_bin(os.path.join(out_dir, "train.bin"), ids[:split], meta["vocab_size"])
    write_bin(os.path.join(out_dir, "val.bin"), ids[split:], meta["vocab_size"])
    write_meta(out_dir, meta)  # last: its presence says the bins are complete
    print(f"{out_dir}: train {split:,} tokens, val {n - split:,} tokens, vocab {meta['vocab_size']}")
