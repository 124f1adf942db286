"""Tiny Shakespeare, character level: each of the 65 distinct characters is one token.

python prepare/shakespeare_char.py [--input PATH] [--out_dir data/shakespeare_char]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare.bins import read_text, split_write  # noqa: E402

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--input", help="a local copy of tinyshakespeare.txt (else out_dir/input.txt, else downloaded)")
    p.add_argument("--out_dir", default="data/shakespeare_char")
    args = p.parse_args(argv)
    text = read_text(args.input, URL, args.out_dir, "prepare/shakespeare_char.py")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = [stoi[c] for c in text]
    meta = {"vocab_size": len(chars), "tokenizer": "char", "chars": "".join(chars)}
    split_write(args.out_dir, ids, meta)


if __name__ == "__main__":
    main()
