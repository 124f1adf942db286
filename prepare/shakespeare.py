"""Tiny Shakespeare with the GPT-2 BPE tokenizer (tiktoken), 50257 tokens.

python prepare/shakespeare.py [--input PATH] [--out_dir data/shakespeare]
"""

import argparse
import os
import sys

import tiktoken

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare.bins import read_text, split_write  # noqa: E402

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--input", help="a local copy of tinyshakespeare.txt (else out_dir/input.txt, else downloaded)")
    p.add_argument("--out_dir", default="data/shakespeare")
    args = p.parse_args(argv)
    text = read_text(args.input, URL, args.out_dir, "prepare/shakespeare.py")
    enc = tiktoken.get_encoding("gpt2")
    ids = enc.encode_ordinary(text)
    split_write(args.out_dir, ids, {"vocab_size": enc.n_vocab, "tokenizer": "gpt2"})


if __name__ == "__main__":
    main()
