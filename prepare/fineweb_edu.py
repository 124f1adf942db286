"""FineWeb-Edu (Penedo et al., 2024): web pages filtered for educational value, with the GPT-2 BPE tokenizer.

python prepare/fineweb_edu.py [--subset sample-10BT] [--out_dir data/fineweb_edu] [--val_fraction 0.0005]
    [--num_proc N] [--streaming]

sample-10BT is ~9.7M documents and ~10B GPT-2 tokens (train.bin ~20 GB, plus ~60 GB of download and cache, or
--streaming to skip the cache); other subsets: sample-100BT, sample-350BT, default (everything), or one crawl
such as CC-MAIN-2024-10. It has no validation split: a seeded 0.05% of the documents becomes val.bin.
Should the Hub's copy be a loading script (datasets 4+ refuse them), the subset's folder of the Hub's parquet
conversion is loaded instead, with a notice. Offline, run prepare/text.py on a local copy of its parquet files.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare.text import add_args, check_args, gpt2, load_hub, prepare  # noqa: E402

REPO = "HuggingFaceFW/fineweb-edu"


def main(argv=None):
    t_start = time.time()
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--subset", default="sample-10BT", help="the dataset config to download (default %(default)s)")
    add_args(p, "data/fineweb_edu", val_fraction=0.0005)
    args = p.parse_args(argv)
    check_args(args)
    gpt2()
    folder = args.subset.replace("-", "/", 1) if args.subset.startswith("sample-") else f"data/{args.subset}"
    local = f"--data_files 'fineweb-edu/{folder}/*.parquet' --val_fraction {args.val_fraction}"
    train, val = load_hub(REPO, args.subset, args, local)  # a config's parquet conversion is the folder of its name
    return prepare(train, val, args, f"hf: {REPO} {args.subset}", t_start)


if __name__ == "__main__":
    main()
