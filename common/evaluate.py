"""
Scoring a language model, for eval.py: perplexity of held-out text, HellaSwag and LAMBADA. Every function takes a
model of the interface in README.md (model(idx) -> (logits, loss), model.config.block_size) and a tokenizer object
(encode(str) -> ids, decode(ids) -> str, eot (None when there is none), vocab_size, name), so it scores any causal
model file, trained here or converted from transformers.

    perplexity    every token of one stream scored exactly once, by windows of block_size moved by a stride (the
                  "strided perplexity" of transformers' docs): loss, perplexity, bits per byte and per character
    hellaswag     Zellers et al. 2019: which of 4 endings the model finds most likely, completion style (build-nanogpt's
                  hellaswag.py; lm-evaluation-harness scores the same way)
    lambada       Paperno et al. 2016, in OpenAI's version (GPT-2 paper): is the last word of a passage the model's
                  greedy continuation, and the perplexity of that word

Both benchmarks rest on one primitive, score_continuations: for (context, continuation) token lists, the summed
log-probability of the continuation and whether every one of its tokens was the argmax.
"""

import json
import math
import os
import sys
import time
import urllib.request
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from common import die
from common.checkpoints import atomic_write

# The original files and where they live. Downloads are cached in data/eval/, beside the token datasets.
SOURCES = {
    "hellaswag": ("hellaswag_val.jsonl",
                  "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"),
    "lambada": ("lambada_test.jsonl", "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"),
}
FULL_SIZE = {"hellaswag": 10042, "lambada": 5153}
CACHE_DIR = os.path.join("data", "eval")
PAD = 0  # any valid id: padded positions are never read (score_continuations)
LN2 = math.log(2)


# ----------------------------------------------------------------------------------------------------------------
# Data: the original files, downloaded once or given by path


def task_file(task, data_file=""):
    """The path of a benchmark's original file: --data_file if given, else the cached download, else downloaded."""
    name, url = SOURCES[task]
    if data_file:
        if not os.path.isfile(data_file):
            die(f"--data_file={data_file}: no such file; pass the path of {task}'s {name}")
        return data_file
    cached = os.path.join(CACHE_DIR, name)
    if os.path.isfile(cached):
        return cached
    print(f"downloading {url} to {cached}")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            raw = r.read()
    except OSError as e:  # URLError, a timeout, a refused connection: all mean "no network to that file"
        why = str(getattr(e, "reason", "") or e.__class__.__name__).replace("\n", " ")[:80]
        die(f"could not download {url} ({why}); download {name} elsewhere and pass --data_file=path/to/{name} "
            f"(or save it as {cached})")
    os.makedirs(CACHE_DIR, exist_ok=True)
    with atomic_write(cached) as f:
        f.write(raw)
    return cached


def read_jsonl(path, check, limit=None):
    """The first `limit` records of a JSON-lines file, each passed through check(record) -> a dict, or the text of
    what is wrong;
    a line that is not a JSON object, or fails the check, stops with its line number. Blank lines are skipped."""
    items = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(items) == limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                die(f"{path} line {n} is not valid JSON ({e}); is it the original JSON-lines file?")
            item = check(record) if isinstance(record, dict) else "not a JSON object"
            if isinstance(item, str):
                die(f"{path} line {n}: {item}; is it the original JSON-lines file?")
            items.append(item)
    if not items:
        die(f"{path} holds no items")
    return items


def hellaswag_item(record):
    """An original hellaswag_val.jsonl record -> {ctx, endings, label}, or what is wrong with it."""
    ctx, endings, label = record.get("ctx"), record.get("endings"), record.get("label")
    if isinstance(label, str) and label.isdigit():  # the datasets-hub copy stores "3" where the original has 3
        label = int(label)
    if not isinstance(ctx, str) or not ctx:
        return "no 'ctx' text"
    if not (isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) and e for e in endings)):
        return "'endings' is not a list of 4 texts"
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < 4:
        return f"'label' is {label!r}, not an int 0-3"
    return {"ctx": ctx, "endings": endings, "label": label}


def lambada_item(record):
    """An original lambada_test.jsonl record -> {text}, or what is wrong with it."""
    text = record.get("text")
    if not isinstance(text, str):
        return "no 'text'"
    if " " not in text.strip():
        return "'text' has no space-separated last word"
    return {"text": text}


def read_hellaswag(path, limit=None):
    return read_jsonl(path, hellaswag_item, limit)


def read_lambada(path, limit=None):
    """-> the passages' texts."""
    return [x["text"] for x in read_jsonl(path, lambada_item, limit)]


# ----------------------------------------------------------------------------------------------------------------
# The primitive: log-probability of a continuation given its context, batched


def half_to_float(logits):
    """bf16/fp16 logits (under autocast) to float32 before the softmax; float32 and float64 stay as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def device_of(model):
    return next(model.parameters()).device


def progress(label, done, total, t0, last):
    """A progress line on stderr every 30 s (a full benchmark on a CPU takes a while); -> the time of the last line."""
    now = time.time()
    if label and now - last > 30:
        print(f"{label}: {done:,}/{total:,} in {now - t0:.0f} s", file=sys.stderr)
        return now
    return last


@torch.no_grad()
def score_continuations(model, pairs, batch_size=8, autocast=nullcontext(), progress_label=""):
    """pairs: [(context ids, continuation ids)] -> [(sum of log p(each continuation token | all before it), number
    of tokens scored, whether every one was the argmax)], in the order of pairs.

    A pair longer than block_size + 1 tokens keeps its last block_size + 1 (the context is cut on the left, as in
    lm-evaluation-harness); a continuation longer than block_size loses its first tokens, which shows in the count.

    Batching: rows are padded on the right with PAD and the logits are read only at positions before the padding.
    That gives exactly the unpadded result for a causal model, the only kind scored here (eval.py checks it):
    position t sees tokens 0..t only, so padding after the row's last real token cannot reach any position read.
    Rows are sorted longest first so a batch holds rows of similar length (less padding) and the largest batch
    comes first (running out of memory shows at once)."""
    block = model.config.block_size
    rows = []
    for ctx, cont in pairs:
        seq = (list(ctx) + list(cont))[-(block + 1):]
        rows.append((seq, min(len(cont), len(seq) - 1)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    device, out = device_of(model), [None] * len(rows)
    t0 = last = time.time()
    for b in range(0, len(order), batch_size):
        batch = order[b:b + batch_size]
        T = max(len(rows[i][0]) for i in batch) - 1  # inputs are all tokens but the last
        x = torch.full((len(batch), T), PAD, dtype=torch.long)
        for r, i in enumerate(batch):
            seq = rows[i][0]
            x[r, :len(seq) - 1] = torch.tensor(seq[:-1])
        with autocast:
            logits, _ = model(x.to(device))
        for r, i in enumerate(batch):
            seq, n = rows[i]
            L = len(seq) - 1
            lg = half_to_float(logits[r, L - n:L])  # (n, V): the predictions of the last n tokens of seq
            target = torch.tensor(seq[-n:] if n else [], dtype=torch.long, device=device)
            logp = F.log_softmax(lg, dim=-1).gather(1, target[:, None])
            out[i] = (logp.sum().item(), n, bool((lg.argmax(-1) == target).all()))
        last = progress(progress_label, min(b + batch_size, len(order)), len(order), t0, last)
    return out


def first_max(values):
    """Index of the largest value, the first one on a tie (as torch.argmin/argmax in build-nanogpt)."""
    return max(range(len(values)), key=lambda k: (values[k], -k))


# ----------------------------------------------------------------------------------------------------------------
# HellaSwag


def hellaswag(model, tok, items, batch_size=8, autocast=nullcontext(), progress_label=""):
    """Completion-style HellaSwag: each ending, joined to the context with a space (" " + ending, as build-nanogpt
    does, since GPT-2's BPE carries the space in the word's token), scored by the summed log-probability of its
    tokens given the context. Three choices of the best ending:
        acc             the largest sum
        acc_norm        the largest mean per token (build-nanogpt's acc_norm; 0.2955 for GPT-2 124M)
        acc_norm_chars  the largest sum per character of the ending (lm-evaluation-harness's acc_norm, which divides
                        by the ending's length in characters; the harness also rewrites the context, so its figures
                        differ from these)
    -> a dict of the three, the item count, how many items were cut to block_size, and per item the 4 sums and
    token counts."""
    pairs = []
    for it in items:
        ctx = tok.encode(it["ctx"])
        pairs += [(ctx, tok.encode(" " + e)) for e in it["endings"]]
    scores = score_continuations(model, pairs, batch_size, autocast, progress_label)
    logprobs, n_tokens, hits = [], [], np.zeros(3)
    truncated = 0
    for i, it in enumerate(items):
        lp = [s[0] for s in scores[4 * i:4 * i + 4]]
        n = [s[1] for s in scores[4 * i:4 * i + 4]]
        truncated += any(len(p[0]) + len(p[1]) > model.config.block_size + 1 for p in pairs[4 * i:4 * i + 4])
        preds = (first_max(lp), first_max([a / max(b, 1) for a, b in zip(lp, n)]),
                 first_max([a / len(e) for a, e in zip(lp, it["endings"])]))
        hits += [p == it["label"] for p in preds]
        logprobs.append(lp)
        n_tokens.append(n)
    acc, acc_norm, acc_norm_chars = (hits / len(items)).tolist()
    return dict(task="hellaswag", items=len(items), acc=acc, acc_norm=acc_norm, acc_norm_chars=acc_norm_chars,
                truncated=truncated, logprobs=logprobs, n_tokens=n_tokens)


# ----------------------------------------------------------------------------------------------------------------
# LAMBADA


def lambada_split(text):
    """A passage -> (context, target): the target is " " + the last space-separated word, as lm-evaluation-harness's
    lambada_openai splits it (the space belongs to the word's first BPE token)."""
    ctx, word = text.rstrip().rsplit(" ", 1)
    return ctx, " " + word


def lambada(model, tok, items, batch_size=8, autocast=nullcontext(), progress_label=""):
    """LAMBADA, last-word prediction. acc: the target's tokens are each the argmax given the context and the target
    tokens before them, which is the same as greedy decoding producing exactly them (each greedy step sees the
    same prefix). As in lm-evaluation-harness, what the model would write after the word is not checked.
    ppl_word: exp of the mean over passages of the target's negative log-likelihood (lm-evaluation-harness's
    "perplexity", 40.06 for GPT-2 124M; the GPT-2 paper's 35.13 is the same measure on its own setup).
    ppl_token: exp of the mean per target token. -> a dict, with per passage the sum, token count and hit."""
    pairs = []
    for text in items:
        ctx, target = lambada_split(text)
        pairs.append((tok.encode(ctx), tok.encode(target)))
    scores = score_continuations(model, pairs, batch_size, autocast, progress_label)
    logprobs, n_tokens, greedy = [s[0] for s in scores], [s[1] for s in scores], [s[2] for s in scores]
    return dict(task="lambada", items=len(items), acc=sum(greedy) / len(items),
                ppl_word=math.exp(-sum(logprobs) / len(items)), ppl_token=math.exp(-sum(logprobs) / sum(n_tokens)),
                truncated=sum(len(a) + len(b) > model.config.block_size + 1 for a, b in pairs),
                logprobs=logprobs, n_tokens=n_tokens, greedy=greedy)


# ----------------------------------------------------------------------------------------------------------------
# Perplexity of a token stream: strided windows


def strided_windows(n_tokens, block_size, stride):
    """Windows over a stream of n_tokens tokens, -> [(start, end, first)]: the window reads ids[start:end] and
    scores its predictions from position `first` on, i.e. the targets ids[start + first + 1 : end + 1]. Windows
    start every `stride` tokens; each scores only the targets no earlier window scored, so every token but the first
    (it has no context) is scored exactly once, with at least block_size - stride tokens of context once the first
    window is past. stride == block_size: non-overlapping windows (train.py's val loss, over every token)."""
    windows, done, start = [], 0, 0  # done: targets ids[1..done] are scored
    while done < n_tokens - 1:
        end = min(start + block_size, n_tokens - 1)
        windows.append((start, end, done - start))
        done, start = end, start + stride
    return windows


@torch.no_grad()
def token_nlls(model, ids, stride=None, batch_size=8, autocast=nullcontext(), progress_label=""):
    """-> float64 array nll[j] = -log p(ids[j + 1] | the window's tokens before it), for j = 0 .. len(ids) - 2.
    ids: a list or array of token ids (a memory-mapped bin is read window by window). stride None = block_size.
    Windows are batched with right padding (only the last one is shorter); see score_continuations for why that
    is exact for a causal model."""
    block = model.config.block_size
    stride = block if stride is None else stride
    if not isinstance(stride, int) or isinstance(stride, bool) or not 1 <= stride <= block:
        die(f"--stride={stride} must be an int from 1 to the model's block_size ({block}); "
            f"{block} (the default) gives non-overlapping windows")
    n = len(ids)
    if n < 2:
        die(f"the text is {n} token(s) long; perplexity needs at least 2 (one to predict from, one to predict)")
    windows, nlls = strided_windows(n, block, stride), np.empty(n - 1)
    device = device_of(model)
    t0 = last = time.time()
    for b in range(0, len(windows), batch_size):
        batch = windows[b:b + batch_size]
        x = torch.full((len(batch), max(e - s for s, e, _ in batch)), PAD, dtype=torch.long)
        for r, (s, e, _) in enumerate(batch):
            x[r, :e - s] = torch.from_numpy(np.asarray(ids[s:e], dtype=np.int64))
        with autocast:
            logits, _ = model(x.to(device))
        for r, (s, e, first) in enumerate(batch):
            target = torch.from_numpy(np.asarray(ids[s + first + 1:e + 1], dtype=np.int64)).to(device)
            nll = F.cross_entropy(half_to_float(logits[r, first:e - s]), target, reduction="none")
            nlls[s + first:e] = nll.double().cpu().numpy()
        last = progress(progress_label, min(b + batch_size, len(windows)), len(windows), t0, last)
    return nlls


def perplexity(model, tok, ids, stride=None, batch_size=8, autocast=nullcontext(), progress_label=""):
    """Strided perplexity of a token stream (token_nlls), -> dict: tokens (scored: all but the first), loss (mean
    nats per token), ppl = exp(loss), bits_per_byte and bits_per_char (per UTF-8 byte and per character of the
    decoded text of the scored tokens), so a character-level and a BPE model compare on the same text.
    End-of-text separators between documents have no text: they count in loss and ppl, and are left out of both
    sides of bits per byte and per character (their loss and their zero bytes)."""
    nlls = token_nlls(model, ids, stride, batch_size, autocast, progress_label)
    targets = np.asarray(ids[1:], dtype=np.int64)
    text = targets != tok.eot if tok.eot is not None else np.ones(len(targets), dtype=bool)
    decoded = tok.decode(targets[text].tolist())
    n_bytes, n_chars = len(decoded.encode("utf-8")), len(decoded)
    bits = float(nlls[text].sum()) / LN2
    loss = float(nlls.mean())
    return dict(task="ppl", tokens=len(nlls), loss=loss, ppl=math.exp(loss),
                bits_per_byte=bits / n_bytes if n_bytes else float("nan"),
                bits_per_char=bits / n_chars if n_chars else float("nan"), bytes=n_bytes, chars=n_chars,
                stride=model.config.block_size if stride is None else stride, block_size=model.config.block_size)


# ----------------------------------------------------------------------------------------------------------------
# Is it a causal LM?


@torch.no_grad()
def check_causal(model, name):
    """Everything above reads next-token predictions and pads on the right, which is right only for a causal
    language model with one logit row per input token. A probe: change the last of 8 tokens; no earlier position's
    logits may move. A bidirectional encoder (models/bert.py) or an encoder-decoder fails it."""
    T = min(8, model.config.block_size)
    x = torch.arange(1, T + 1, device=device_of(model))[None] % model.config.vocab_size
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % model.config.vocab_size
    try:
        a, b = model(x)[0], model(y)[0]
        ok = a.shape[:2] == (1, T) and bool((a[0, :-1] - b[0, :-1]).abs().max() <= 1e-4 * (a.abs().max() + 1e-30))
    except Exception as e:  # a model that cannot even take plain token ids
        ok, why = False, f"({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    else:
        why = "(a later token changes earlier predictions, or not one logit row per token)"
    if not ok:
        die(f"{name} is not a causal language model {why}; eval.py scores left-to-right next-token predictions "
            f"only, e.g. models/gpt2.py, llama.py, mamba.py")
