"""
Score a model: perplexity of a text or a token bin, HellaSwag, LAMBADA.

    python eval.py --ckpt=out/shakespeare_char --task=ppl --data=shakespeare_char --split=val
    python eval.py --ckpt=hf:gpt2 --task=ppl --data_file=some.txt --stride=512
    python eval.py --ckpt=hf:gpt2 --task=hellaswag                  # downloads hellaswag_val.jsonl (10,042 items)
    python eval.py --ckpt=hf:gpt2 --task=lambada --data_file=lambada_test.jsonl --limit=500

Settings are written --key=value, as for sample.py. --ckpt is a checkpoint of train.py (or its out_dir), hf:<id> of
the Hugging Face hub, or a directory in the Hugging Face format; common/hf.py turns any of them into a model file of
models/ and its tokenizer. What is scored and how is in common/evaluate.py:
- ppl: windows of the model's block_size, moved by --stride (default block_size: non-overlapping); every token but
  the first is scored once. Loss (nats/token), perplexity, and bits per byte and per character of the decoded text,
  which compare across tokenizers. --data=DATASET reads data/DATASET/<split>.bin; --data_file a UTF-8 text file.
- hellaswag: the validation set; acc, acc_norm (per token, build-nanogpt) and acc_norm_chars (per character,
  lm-evaluation-harness's normalisation).
- lambada: OpenAI's test set (5,153 passages); last-word accuracy under greedy decoding and the word's perplexity.
Online the benchmark files are downloaded once into data/eval/; offline pass the original file with --data_file.
The last line printed is the result as JSON.
"""

import difflib
import json
import os
import sys
import time

import numpy as np

from common import die, evaluate
from common.data import load_meta
from common.devices import autocast_for, pick_device, pick_dtype
from common.hf import load_model, meta_tok
from common.settings import parse_args

DEFAULTS = dict(
    ckpt="",  # train.py's checkpoint or out_dir, hf:<id>, or a Hugging Face model directory
    task="",  # ppl, hellaswag or lambada
    data="",  # ppl: a dataset under data/ (its <split>.bin and meta.json)
    split="val",  # ppl with --data: which bin
    data_file="",  # the benchmark's original file (offline), or for ppl a UTF-8 text file
    stride=None,  # ppl: how far each window moves; None = block_size (non-overlapping windows)
    batch_size=8,  # sequences per forward pass (a HellaSwag item is 4)
    limit=None,  # only the first N items (ppl: the first N tokens)
    block_size=None,  # a shorter context than the model's own (e.g. a hub model with a 128K context)
    device="auto",
    dtype="auto",
)
TASKS = ("ppl", "hellaswag", "lambada")


def check_args(args):
    """Every check that needs no model, before one is loaded (loading a hub model takes a while)."""
    if not args["ckpt"]:
        die("--ckpt is required: a checkpoint or out_dir of train.py, hf:<id>, or a Hugging Face model directory")
    if not args["task"]:
        die(f"--task is required: one of {', '.join(TASKS)}")
    if args["task"] not in TASKS:
        close = difflib.get_close_matches(args["task"], TASKS, n=1)
        die(f"--task={args['task']!r} is not one of {', '.join(TASKS)}"
            + (f"; did you mean {close[0]!r}?" if close else ""))
    for key in ("batch_size", "limit", "stride", "block_size"):
        v = args[key]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            die(f"--{key}={v} must be a whole number of at least 1")
    if args["task"] == "ppl":
        if bool(args["data"]) == bool(args["data_file"]):
            die("--task=ppl needs one of --data=DATASET (data/DATASET/<split>.bin) or --data_file=TEXT_FILE")
    else:
        if args["data"]:
            die(f"--data is for --task=ppl; --task={args['task']} reads its own file (--data_file to give it)")
        if args["stride"] is not None:
            die(f"--stride is for --task=ppl; --task={args['task']} scores whole items")


def open_ppl_source(args):
    """ppl's data, found before the model is loaded: ('text', str) or ('bin', uint16 memmap, meta, path)."""
    if args["data_file"]:
        path = args["data_file"]
        if not os.path.isfile(path):
            die(f"--data_file={path}: no such file; pass a UTF-8 text file")
        try:
            with open(path, encoding="utf-8") as f:
                return "text", f.read(), None, path
        except UnicodeDecodeError as e:
            die(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x}); convert it first, e.g. iconv -t utf-8")
    data_dir = os.path.join("data", args["data"])
    meta = load_meta(data_dir, args["data"])
    path = os.path.join(data_dir, f"{args['split']}.bin")
    if not os.path.isfile(path):
        have = sorted(f[:-4] for f in os.listdir(data_dir) if f.endswith(".bin"))
        die(f"{path} is missing; --split is one of {', '.join(have) or 'nothing yet'}")
    if os.path.getsize(path) % 2:
        die(f"{path} has an odd number of bytes, so it is not a uint16 token file; rerun the dataset's prepare script")
    return "bin", np.memmap(path, dtype=np.uint16, mode="r"), meta, path


def bin_in_model_tokens(ids, meta, tok):
    """A bin's tokens as the model's tokenizer has them, -> (ids, the tokenizer that decodes them). Unchanged when
    the two tokenizers decode every id of the data the same way (checked on the distinct ids of its first 1M
    tokens), else decoded to text and encoded again, document by document: a BPE model then scores the very text a
    character model scores, and bits per byte compare. A model without a tokenizer of its own reads the ids as
    they are."""
    data_tok = meta_tok(meta)
    if getattr(tok, "missing", None):
        print(f"note: the model has no tokenizer; reading {meta['tokenizer']} token ids as its own", file=sys.stderr)
        return ids, data_tok
    if all(tok.decode([i]) == data_tok.decode([i]) for i in np.unique(ids[:1 << 20]).tolist()):
        return ids, tok
    print(f"note: the data's tokenizer ({meta['tokenizer']}) is not the model's ({tok.name}): decoding the data to "
          f"text and encoding that with the model's", file=sys.stderr)
    ids = np.asarray(ids, dtype=np.int64)
    cuts = np.flatnonzero(ids == data_tok.eot) if data_tok.eot is not None else np.array([], dtype=np.int64)
    out, start = [], 0
    for cut in [*cuts.tolist(), len(ids)]:  # an end-of-text token between documents stays one, in the model's ids
        out += tok.encode(data_tok.decode(ids[start:cut].tolist()))
        if cut < len(ids) and tok.eot is not None:
            out.append(tok.eot)  # a model without one reads the documents run on
        start = cut + 1
    return np.asarray(out, dtype=np.int64), tok


def main(argv):
    args = parse_args(argv, DEFAULTS, "eval.py")
    check_args(args)
    task, limit = args["task"], args["limit"]
    device = pick_device(args["device"])
    autocast = autocast_for(device, pick_dtype(args["dtype"], device))

    # The data first: a missing file, a failed download or a malformed line should not wait for the model.
    if task == "ppl":
        kind, data, meta, where = open_ppl_source(args)
    else:
        where = evaluate.task_file(task, args["data_file"])
        items = (evaluate.read_hellaswag if task == "hellaswag" else evaluate.read_lambada)(where, limit)

    model, name, tok = load_model(args["ckpt"], device=str(device), block_size=args["block_size"])  # in eval mode
    evaluate.check_causal(model, name)
    block = model.config.block_size
    if args["stride"] is not None and args["stride"] > block:
        die(f"--stride={args['stride']} is more than the model's block_size ({block}): tokens between windows "
            f"would not be scored; use at most {block}")

    t0 = time.time()
    kw = dict(batch_size=args["batch_size"], autocast=autocast, progress_label=f"{task} ({name})")
    if task == "ppl":
        ids, tok = (tok.encode(data), tok) if kind == "text" else bin_in_model_tokens(data, meta, tok)
        ids = ids[:limit] if limit else ids
        if len(ids) and int(np.max(ids)) >= model.config.vocab_size:
            die(f"{where} holds token id {int(np.max(ids))} but the model's vocab_size is {model.config.vocab_size}")
        r = evaluate.perplexity(model, tok, ids, stride=args["stride"], **kw)
        summary = (f"loss {r['loss']:.4f} nats/token, ppl {r['ppl']:.3f}, {r['bits_per_byte']:.4f} bits/byte, "
                   f"{r['bits_per_char']:.4f} bits/char ({r['tokens']:,} tokens scored, {r['bytes']:,} bytes, "
                   f"windows of {r['block_size']} every {r['stride']})")
    elif task == "hellaswag":
        r = evaluate.hellaswag(model, tok, items, **kw)
        summary = (f"acc {r['acc']:.4f}, acc_norm {r['acc_norm']:.4f} (per token, as build-nanogpt), "
                   f"acc_norm_chars {r['acc_norm_chars']:.4f} (per character, as lm-evaluation-harness)")
    else:
        r = evaluate.lambada(model, tok, items, **kw)
        summary = (f"acc {r['acc']:.4f} (last word, greedy), ppl_word {r['ppl_word']:.2f} (per passage, as "
                   f"lm-evaluation-harness), ppl_token {r['ppl_token']:.2f}")
    dt = time.time() - t0
    r = {k: v for k, v in r.items() if k not in ("logprobs", "n_tokens", "greedy")}  # per-item lists stay in memory
    r.update(model=name, ckpt=args["ckpt"], data=where, seconds=round(dt, 2))
    if task != "ppl":
        full = evaluate.FULL_SIZE[task]
        if not limit and r["items"] != full:
            print(f"note: {where} holds {r['items']:,} items; the original has {full:,}", file=sys.stderr)
        if r["truncated"]:
            print(f"note: {r['truncated']} items were longer than block_size + 1 = {block + 1} tokens and were cut "
                  f"on the left", file=sys.stderr)
        summary = f"{r['items']:,} items: {summary}"
    print(f"{task} of {name} on {where}: {summary}; {dt:.1f} s")
    print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv[1:])
