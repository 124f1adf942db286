"""Any local corpus (.txt, .jsonl, .json, .parquet files) with the GPT-2 BPE tokenizer (tiktoken), via `datasets`.

python prepare/text.py --data_files 'corpus/*.jsonl' [--text_column text] [--out_dir data/text]
    [--val_fraction 0.01 | --val_files 'corpus/val/*.jsonl'] [--num_proc N] [--streaming] [--seed 2357]

The hub scripts (openwebtext.py, fineweb_edu.py, tinystories.py) only load their documents differently (a dataset
still published as a loading script, which datasets 4+ refuses, comes from the Hub's parquet conversion of it instead,
with a notice); from then on they run this file's code:
  1. the documents are one `datasets` Dataset with a single "text" column, one row per document;
  2. validation is split off by whole documents (a seeded shuffle, or the dataset's own validation split), so no
     document is cut in two across train and val;
  3. Dataset.map(batched=True, num_proc=N) tokenizes with tiktoken's GPT-2 encode_ordinary and appends the
     end-of-text token 50256 after each document, which tells the model where one document stops and the next
     begins (encode_ordinary: a literal "<|endoftext|>" inside a text stays ordinary text);
  4. train.bin / val.bin (flat uint16, read with np.memmap) are sized from the token counts, filled batch by batch
     under a temporary name, then both renamed; meta.json comes last. An interrupted run leaves the previous files
     (or none) untouched.
With --streaming nothing is cached on disk: documents are read, tokenized (num_proc threads) and appended to the
temporary files as they arrive, and every k-th document goes to val, k = round(1 / val_fraction).
"""

import argparse
import glob
import os
import sys
import time
from functools import lru_cache
from itertools import chain

import numpy as np
import pyarrow.compute as pc
from datasets import Features, List, Value, concatenate_datasets, load_dataset
from datasets import __version__ as DATASETS_VERSION
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare.bins import atomic_write, check_uint16, die, write_meta  # noqa: E402

FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}  # suffix -> datasets builder
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")  # datasets opens these transparently
BATCH_DOCS = 1000  # documents per tokenizer batch and per write step: bounds memory, not the corpus size
PARQUET = "refs/convert/parquet"  # the branch where the Hub keeps its own parquet conversion of a dataset


# ----------------------------------------------------------------------------- the tokenizer

@lru_cache(maxsize=None)
def gpt2():
    """tiktoken's GPT-2 encoding (vocab 50257, end-of-text 50256); loaded once per process."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken downloads its files once; offline that fails with a long traceback
        die(f"could not load tiktoken's gpt2 encoding ({e.__class__.__name__}); it is downloaded once and cached: "
            f"point TIKTOKEN_CACHE_DIR at a folder that holds it")


def tokenize(batch, num_threads=1):
    """Dataset.map(batched=True) function: each document's GPT-2 ids followed by end-of-text, and their count.
    An empty document gives no tokens at all (rather than a lone end-of-text)."""
    enc = gpt2()
    texts = [t or "" for t in batch["text"]]
    if num_threads > 1:  # streaming: tiktoken's threads release the GIL, so they run in parallel
        docs = enc.encode_ordinary_batch(texts, num_threads=num_threads)
    else:  # Dataset.map: one process per core already
        docs = [enc.encode_ordinary(t) for t in texts]
    ids = [doc + [enc.eot_token] if doc else [] for doc in docs]
    return {"ids": ids, "len": [len(x) for x in ids]}


TOKENIZED = Features({"ids": List(Value("uint16")), "len": Value("int64")})  # uint16: half the cache of int32


# ----------------------------------------------------------------------------- loading documents

def file_format(path):
    name = path.lower()
    for ext in COMPRESSED:
        name = name.removesuffix(ext)
    return FORMATS.get(os.path.splitext(name)[1])


def expand(patterns, flag):
    """Globs (recursive ** allowed) and folders -> a sorted list of supported files; one error line otherwise."""
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):  # a folder: every supported file below it
            hits = [f for f in glob.glob(os.path.join(pattern, "**", "*"), recursive=True) if file_format(f)]
        else:
            hits = glob.glob(pattern, recursive=True)
            for f in hits:
                if os.path.isfile(f) and not file_format(f):
                    die(f"{f}: unsupported file type; use .txt, .jsonl, .json or .parquet "
                        f"(optionally {', '.join(COMPRESSED)})")
        hits = sorted(f for f in hits if os.path.isfile(f))
        if not hits:
            die(f"{flag} {pattern}: no such file")
        files += hits
    return files


def text_only(ds, column, where):
    """Keep one column of documents and call it "text", the name every later step uses."""
    if ds.column_names is not None and column not in ds.column_names:
        die(f"{where} has no column {column!r} (it has {', '.join(ds.column_names)}); choose one with --text_column")
    ds = ds.select_columns([column])
    return ds if column == "text" else ds.rename_column(column, "text")


def load_files(files, text_column, txt_sample_by, streaming, cache_dir, num_proc):
    """Local files as one Dataset (IterableDataset with streaming) of documents: a row of a .jsonl/.json/.parquet
    file is a document; a .txt file is one document, or one per paragraph or line (txt_sample_by)."""
    by_format = {}
    for f in files:
        by_format.setdefault(file_format(f), []).append(f)
    parts = []
    for builder, fs in by_format.items():
        kwargs = {"sample_by": txt_sample_by} if builder == "text" else {}
        if not streaming and min(num_proc, len(fs)) > 1:  # converting to Arrow runs one process per file
            kwargs["num_proc"] = min(num_proc, len(fs))
        ds = load_dataset(builder, data_files=fs, split="train", streaming=streaming, cache_dir=cache_dir, **kwargs)
        parts.append(text_only(ds, "text" if builder == "text" else text_column, fs[0]))
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def hub_reachable(endpoint, repo):
    """One request with a short timeout, instead of the half minute of retries load_dataset would spend."""
    from huggingface_hub.utils import get_session
    try:
        get_session().head(f"{endpoint}/api/datasets/{repo}", timeout=10)
        return True
    except Exception:
        return False


def refuses_script(e):
    """Whether load_dataset failed because the dataset is a loading script, which datasets 4 and later no longer run:
    they raise a plain RuntimeError("Dataset scripts are no longer supported, but found <name>.py"). There is no
    dedicated class, so: that type and the stable part of the message, on the error or one raised from it."""
    while e is not None:
        if isinstance(e, RuntimeError) and "scripts are no longer supported" in str(e).lower():
            return True
        e = e.__cause__
    return False


def parquet_partial(repo, folder):
    """Whether the Hub converted only the first part of a big dataset (folders named partial-<split>); None when
    the listing fails, since this only refines a notice."""
    from huggingface_hub import HfApi
    try:
        tree = HfApi().list_repo_tree(repo, path_in_repo=folder, revision=PARQUET, repo_type="dataset")
        return any(os.path.basename(entry.path).startswith("partial-") for entry in tree)
    except Exception:
        return None


def cannot_load(repo, e, hint, what="could not load it"):
    """End the run with one line: what failed, the first line of the error (tracebacks of datasets run long)."""
    why = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
    if isinstance(e, ConnectionError):
        what = "the Hugging Face Hub is unreachable"
    die(f"{repo}: {what} ({why}); {hint}")


def load_hub(repo, name, args, local_hint, parquet_dir=None):
    """(train, val) of a Hugging Face Hub dataset, each with one "text" column; val is None when the dataset has no
    validation split. Anything that stops the download ends the run with one line pointing at prepare/text.py.

    A dataset that is still a loading script (refused by datasets 4 and later) is loaded instead from the Hub's
    parquet conversion of it, the branch refs/convert/parquet, with one line saying so. That branch holds only
    <config>/<split>/NNNN.parquet files, no README, so datasets sees a single config, "default", spanning every
    config's folder: data_dir = parquet_dir (default: name, else "default") keeps the one wanted."""
    from huggingface_hub import constants
    hint = f"with a local copy of its files run `python prepare/text.py {local_hint} --out_dir {args.out_dir}`"
    if not constants.HF_HUB_OFFLINE and not hub_reachable(constants.ENDPOINT, repo):
        die(f"the Hugging Face Hub ({constants.ENDPOINT}) is unreachable, so {repo} cannot be downloaded; {hint}")
    kwargs = {"streaming": args.streaming, "cache_dir": args.cache_dir,
              **({} if args.streaming or args.num_proc < 2 else {"num_proc": args.num_proc})}
    try:
        splits = load_dataset(repo, name, **kwargs)
    except Exception as e:  # offline mode without a cached copy, a dropped connection, a renamed dataset...
        if not refuses_script(e):
            cannot_load(repo, e, hint)
        folder = parquet_dir or name or "default"
        partial = parquet_partial(repo, folder)  # the Hub converts only the start of a big dataset: say so
        print(f"{repo} is a loading script, which datasets {DATASETS_VERSION} no longer runs: loading the Hub's "
              f"parquet conversion of it instead ({PARQUET}, {folder}/)"
              + ("; it is partial: the Hub converted only the first part of this big dataset" if partial else ""))
        try:
            splits = load_dataset(repo, "default", revision=PARQUET, data_dir=folder, **kwargs)
        except Exception as err:  # no conversion on the Hub, or none for this config...
            cannot_load(repo, err, hint, f"it is a loading script and its parquet conversion ({PARQUET}, {folder}/) "
                                       f"could not be loaded either")
    train = text_only(splits["train"], "text", repo)
    val = text_only(splits["validation"], "text", repo) if "validation" in splits else None
    return train, val


# ----------------------------------------------------------------------------- writing the bins

def batch_ids(table):
    """The token ids of a batch of tokenized documents (an Arrow table) as one flat uint16 array, zero-copy."""
    return pc.list_flatten(table.column("ids")).to_numpy()


def fill_bins(train, val, files, args, timings):
    """Tokenize both splits into the datasets cache, then copy each into a uint16 memmap of exactly its size."""
    if val is None:
        if len(train) < 2:
            die(f"{len(train)} document(s): need at least 2 to split off validation (give --val_files, or "
                f"--txt_sample_by paragraph to cut one big .txt into documents)")
        try:
            split = train.train_test_split(test_size=args.val_fraction, seed=args.seed)  # shuffles, by document
        except ValueError as e:
            die(f"--val_fraction {args.val_fraction}: {e}")
        train, val = split["train"], split["test"]
    t = time.time()
    num_proc = args.num_proc if args.num_proc > 1 else None
    tokenized = {s: ds.map(tokenize, batched=True, batch_size=BATCH_DOCS, remove_columns=["text"],
                           features=TOKENIZED, num_proc=num_proc, desc=f"tokenizing {s}")
                 for s, ds in (("train", train), ("val", val))}
    timings["tokenize"] = time.time() - t
    t = time.time()
    counts = {}
    for s, ds in tokenized.items():
        lens = ds.select_columns(["len"]).with_format("numpy")[:]["len"]
        n = int(lens.sum())
        if n == 0:
            die(f"the {s} split has no tokens: all its documents are empty")
        out = np.memmap(files[s], dtype=np.uint16, mode="w+", shape=(n,))
        pos = 0
        with tqdm(total=n, unit="tok", unit_scale=True, desc=f"writing {s}.bin") as bar:
            for table in ds.select_columns(["ids"]).with_format("arrow").iter(batch_size=BATCH_DOCS):
                ids = batch_ids(table)
                out[pos:pos + len(ids)] = ids
                pos += len(ids)
                bar.update(len(ids))
        assert pos == n, f"{s}: wrote {pos} tokens, expected {n}"
        out.flush()
        del out
        counts[f"{s}_tokens"], counts[f"{s}_docs"] = n, int(np.count_nonzero(lens))
    timings["write"] = time.time() - t
    return counts


def stream_bins(train, val, files, args):
    """Read, tokenize and append as the documents arrive; without a validation split every k-th document is val."""
    every = None if val is not None else max(1, round(1 / args.val_fraction))
    counts = {"train_tokens": 0, "train_docs": 0, "val_tokens": 0, "val_docs": 0}
    with tqdm(unit="doc", unit_scale=True, desc="streaming") as bar:
        for s, ds in [("train", train)] + ([("val", val)] if val is not None else []):
            tokenized = ds.map(tokenize, batched=True, batch_size=BATCH_DOCS, remove_columns=["text"],
                               fn_kwargs={"num_threads": args.num_proc})
            doc = 0  # index among non-empty documents
            for batch in tokenized.iter(batch_size=BATCH_DOCS):
                picked = {"train": [], "val": []}
                for ids in batch["ids"]:
                    if ids:
                        picked["val" if every and doc % every == 0 else s].append(ids)
                        doc += 1
                for dest, docs in picked.items():
                    arr = np.fromiter(chain.from_iterable(docs), dtype=np.uint16)
                    arr.tofile(files[dest])
                    counts[f"{dest}_tokens"] += len(arr)
                    counts[f"{dest}_docs"] += len(docs)
                bar.update(len(batch["ids"]))
    for s in files:
        if counts[f"{s}_tokens"] == 0:
            die(f"the {s} split has no tokens: too few non-empty documents for --val_fraction {args.val_fraction}")
    return counts


def prepare(train, val, args, source, t_start):
    """Tokenize train/val documents into out_dir/{train,val}.bin and meta.json; print docs/s and tokens/s."""
    enc = gpt2()
    check_uint16([], enc.n_vocab)
    if val is None and getattr(args, "val_fraction", None) is None:
        die(f"{source} has no validation split; this script expects one")
    os.makedirs(args.out_dir, exist_ok=True)
    timings = {"load": time.time() - t_start}
    # Both bins are complete (and on disk) before either takes its final name; a failure removes both.
    with atomic_write(os.path.join(args.out_dir, "train.bin"), "w+b") as f_train, \
            atomic_write(os.path.join(args.out_dir, "val.bin"), "w+b") as f_val:
        files = {"train": f_train, "val": f_val}
        if args.streaming:
            counts = stream_bins(train, val, files, args)
        else:
            counts = fill_bins(train, val, files, args, timings)
    meta = {"vocab_size": enc.n_vocab, "tokenizer": "gpt2", "source": source, **counts}
    write_meta(args.out_dir, meta)  # last: its presence says the bins are complete
    seconds = time.time() - t_start
    docs, tokens = counts["train_docs"] + counts["val_docs"], counts["train_tokens"] + counts["val_tokens"]
    stages = "" if args.streaming else " (" + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")"
    print(f"{args.out_dir}: train {counts['train_tokens']:,} tokens ({counts['train_docs']:,} docs), "
          f"val {counts['val_tokens']:,} tokens ({counts['val_docs']:,} docs), vocab {enc.n_vocab}")
    print(f"{docs:,} docs, {tokens:,} tokens in {seconds:.1f} s: {docs / seconds:,.0f} docs/s, "
          f"{tokens / seconds:,.0f} tokens/s, num_proc={args.num_proc}{stages}")
    return meta


# ----------------------------------------------------------------------------- command line

def add_args(p, out_dir, val_fraction=None):
    """The options every prepare script of this family shares; val_fraction None: the dataset has its own split."""
    p.add_argument("--out_dir", default=out_dir)
    if val_fraction is not None:
        p.add_argument("--val_fraction", type=float, default=val_fraction,
                       help="share of the documents that go to val.bin (default %(default)s)")
    p.add_argument("--num_proc", type=int, default=os.cpu_count() or 1,
                   help="tokenizer processes (threads with --streaming); default: all cores (%(default)s)")
    p.add_argument("--streaming", action="store_true",
                   help="read and write as the documents arrive, with no disk cache (for corpora larger than it)")
    p.add_argument("--seed", type=int, default=2357, help="seed of the document shuffle that picks val")
    p.add_argument("--cache_dir", help="datasets cache (default: HF_DATASETS_CACHE or ~/.cache/huggingface/datasets)")


def check_args(args):
    if args.num_proc < 1:
        die(f"--num_proc {args.num_proc}: must be at least 1")
    val_fraction = getattr(args, "val_fraction", None)
    if val_fraction is not None and not 0 < val_fraction < 1:
        die(f"--val_fraction {val_fraction}: must be between 0 and 1")


def main(argv=None):
    t_start = time.time()
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--data_files", nargs="+", required=True, metavar="GLOB",
                   help="files, folders or globs (quote them) of .txt/.jsonl/.json/.parquet, optionally compressed")
    p.add_argument("--val_files", nargs="+", metavar="GLOB", help="a validation split of its own (no --val_fraction)")
    p.add_argument("--text_column", default="text", help="the column of .jsonl/.json/.parquet rows holding the text")
    p.add_argument("--txt_sample_by", choices=["document", "paragraph", "line"], default="document",
                   help="a .txt file is one document (default), or one per blank-line-separated paragraph, or line")
    add_args(p, "data/text", val_fraction=0.01)
    args = p.parse_args(argv)
    check_args(args)
    gpt2()  # fail early, before any loading, if the tokenizer is missing

    def load(patterns, flag):
        files = expand(patterns, flag)
        return load_files(files, args.text_column, args.txt_sample_by, args.streaming, args.cache_dir, args.num_proc)

    train = load(args.data_files, "--data_files")
    val = load(args.val_files, "--val_files") if args.val_files else None
    return prepare(train, val, args, "local: " + " ".join(args.data_files), t_start)


if __name__ == "__main__":
    main()
