"""TinyStories (Eldan & Li, 2023): short synthetic stories, with the GPT-2 BPE tokenizer, from the Hugging Face Hub.

python prepare/tinystories.py [--out_dir data/tinystories] [--num_proc N] [--streaming]

Uses the dataset's own validation split. Should the Hub's copy be a loading script (datasets 4+ refuse them), its
parquet conversion (config "default") is loaded instead, with a notice. Offline, run prepare/text.py on a local copy
of its parquet files.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare.text import add_args, check_args, gpt2, load_hub, prepare  # noqa: E402

REPO = "roneneldan/TinyStories"
LOCAL = "--data_files 'TinyStories/**/train-*.parquet' --val_files 'TinyStories/**/validation-*.parquet'"


def main(argv=None):
    t_start = time.time()
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_args(p, "data/tinystories")
    args = p.parse_args(argv)
    check_args(args)
    gpt2()
    train, val = load_hub(REPO, None, args, LOCAL)
    return prepare(train, val, args, f"hf: {REPO}", t_start)


if __name__ == "__main__":
    main()
