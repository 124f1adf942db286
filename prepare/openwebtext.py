"""OpenWebText (Gokaslan & Cohen, 2019), the open replica of GPT-2's WebText, with the GPT-2 BPE tokenizer.

python prepare/openwebtext.py [--out_dir data/openwebtext] [--val_fraction 0.0005] [--num_proc N] [--streaming]

About 8M documents and 9B tokens (train.bin ~17 GB); downloading and caching the corpus needs ~55 GB more disk.
It has no validation split: a seeded 0.05% of the documents (~4k) becomes val.bin, as nanoGPT does.
The Hub's copy was a loading script, which datasets 4+ refuse: while it is, the Hub's parquet conversion of it is
loaded instead, with a notice.
Offline, run prepare/text.py on a local copy of its files.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare.text import add_args, check_args, gpt2, load_hub, prepare  # noqa: E402

REPO = "Skylion007/openwebtext"
LOCAL = "--data_files 'openwebtext/**/*.parquet' --val_fraction 0.0005"
PARQUET_DIR = "plain_text"  # the script's one config, whose name is the folder in the Hub's parquet conversion


def main(argv=None):
    t_start = time.time()
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_args(p, "data/openwebtext", val_fraction=0.0005)
    args = p.parse_args(argv)
    check_args(args)
    gpt2()
    train, val = load_hub(REPO, None, args, LOCAL, parquet_dir=PARQUET_DIR)
    return prepare(train, val, args, f"hf: {REPO}", t_start)


if __name__ == "__main__":
    main()
