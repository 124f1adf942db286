"""eval.py and common/evaluate.py: HellaSwag, LAMBADA and strided perplexity against a reference computed here,
item by item, on transformers' GPT2LMHeadModel with the same weights (float64); batching; the window arithmetic;
bits per byte; and the one-line errors."""

import json
import math
import re

import numpy as np
import pytest
import tiktoken
import torch
import torch.nn as nn
import transformers

import eval as eval_script
from common import evaluate
from conftest import TINY, corpus_text, run, write_char_dataset
from models.gpt2 import Config, Model

BLOCK = 128
ENC = tiktoken.get_encoding("gpt2")


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers with the interface common/evaluate.py expects (encode, decode, eot, vocab_size, name)


class GPT2Tok:
    name, eot, vocab_size = "gpt2", ENC.eot_token, ENC.n_vocab

    def encode(self, s):
        return ENC.encode_ordinary(s)

    def decode(self, ids):
        return ENC.decode(list(ids))


class CharTok:
    name, eot = "char", None

    def __init__(self, chars):
        self.chars, self.stoi, self.vocab_size = chars, {c: i for i, c in enumerate(chars)}, len(chars)

    def encode(self, s):
        return [self.stoi[c] for c in s]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


# ----------------------------------------------------------------------------------------------------------------
# The model: a random transformers GPT-2 (init scale raised so the logits are far from flat), float64, and ours
# with its weights


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=ENC.n_vocab, n_positions=BLOCK, n_embd=32, n_layer=2, n_head=4,
                                  resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=None, eos_token_id=None,
                                  initializer_range=0.3)
    hf = transformers.GPT2LMHeadModel(cfg).eval().to(torch.float64)
    ours = Model.from_hf_state_dict(hf.state_dict(), Config(block_size=BLOCK, vocab_size=ENC.n_vocab, n_layer=2,
                                                             n_head=4, n_embd=32)).eval().to(torch.float64)
    return hf, ours


@torch.no_grad()
def hf_logprobs(hf, ids):
    """(len(ids), V) log-probabilities of the next token after each prefix of ids, one sequence, no batching."""
    return torch.log_softmax(hf(torch.tensor([ids])).logits[0], dim=-1)


def greedy(hf, ids, n):
    """n tokens of transformers' greedy generate after ids. The explicit attention mask matters: without it generate
    masks every prompt position holding pad_token_id (here 0, "!", which the texts contain)."""
    x = torch.tensor([ids])
    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, eos_token_id=None,
                      pad_token_id=0)
    return out[0, len(ids):].tolist()


def close(a, b, rel=1e-9):
    """Equal up to float64 rounding of two different implementations (ours and transformers')."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.abs(a - b).max() <= rel * max(np.abs(b).max(), 1.0)


# ----------------------------------------------------------------------------------------------------------------
# Fixtures in the original formats


ROOF = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
        "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                    "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
        "source_id": "activitynet~v_-JhWjGDPHMY"}


def write_hellaswag(path, n=9):
    """hellaswag_val.jsonl as the original: one JSON object a line with every key; the first is the original's item
    24, one context is long enough (> BLOCK tokens) to be cut on the left."""
    text, rng = corpus_text(60_000), np.random.default_rng(0)
    lines = [ROOF]
    for i in range(1, n):
        s = int(rng.integers(0, 50_000))
        ctx = " ".join(text[s:s + (900 if i == 3 else int(rng.integers(80, 220)))].split())
        ends = [" ".join(text[e:e + int(rng.integers(30, 110))].split()) for e in rng.integers(0, 50_000, 4)]
        a, _, b = ctx.rpartition(". ")
        lines.append({"ind": 100 + i, "activity_label": "Reading", "ctx_a": a, "ctx_b": b, "ctx": ctx, "split": "val",
                      "split_type": "zeroshot", "label": int(rng.integers(0, 4)), "endings": ends,
                      "source_id": f"wikihow~{i}"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return lines


def lambada_texts(hf):
    """Passages for lambada_test.jsonl, made so that some last words are the model's greedy continuation (a random
    model would otherwise get none right and the accuracy would test nothing): per context, the greedy 2 tokens
    give a hit of 2 tokens when they spell " word" and encode back to the same 2 tokens, a hit of 1 token
    likewise, and a near miss (first token right, then a wrong letter); plus plain misses and one passage longer
    than BLOCK tokens."""
    text, rng = corpus_text(60_000), np.random.default_rng(1)
    texts, hits = [], 0
    for _ in range(16):
        s = int(rng.integers(0, 50_000))
        ctx = " ".join(text[s:s + int(rng.integers(60, 250))].split())
        ids = ENC.encode_ordinary(ctx)
        gen = greedy(hf, ids, 2)
        one, two = ENC.decode(gen[:1]), ENC.decode(gen)
        if re.fullmatch(r" [A-Za-z]+", two) and ENC.encode_ordinary(two) == gen:
            texts += [ctx + two, ctx + one + "q" if one.strip() else ctx + " qq"]
            hits += 1
        elif re.fullmatch(r" [A-Za-z]+", one) and ENC.encode_ordinary(one) == gen[:1]:
            texts.append(ctx + one)
            hits += 1
        else:
            texts.append(ctx + " house")
    texts.append(" ".join(text[1000:1800].split()) + " crown")
    assert hits >= 3, hits  # the fixture did what it is for
    return texts


def write_lambada(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


# ----------------------------------------------------------------------------------------------------------------
# Reference computations: one item at a time, transformers' logits, written from the task definitions


def ref_continuation(hf, ctx_ids, cont_ids):
    """(sum of log p, tokens scored) of cont given ctx, keeping the last BLOCK + 1 tokens of the pair."""
    full = (ctx_ids + cont_ids)[-(BLOCK + 1):]
    n = min(len(cont_ids), len(full) - 1)
    logp = hf_logprobs(hf, full[:-1])
    return sum(logp[p - 1, full[p]].item() for p in range(len(full) - n, len(full))), n


def ref_hellaswag(hf, lines):
    lps, ns, hits = [], [], np.zeros(3)
    for x in lines:
        ctx = ENC.encode_ordinary(x["ctx"])
        scored = [ref_continuation(hf, ctx, ENC.encode_ordinary(" " + e)) for e in x["endings"]]
        lp, n = [s[0] for s in scored], [s[1] for s in scored]
        per_tok, per_char = [a / b for a, b in zip(lp, n)], [a / len(e) for a, e in zip(lp, x["endings"])]
        hits += [int(np.argmax(v)) == x["label"] for v in (lp, per_tok, per_char)]
        lps.append(lp)
        ns.append(n)
    return lps, ns, hits / len(lines)


def ref_lambada(hf, texts):
    """Greedy decoding with transformers' generate: a hit when it writes exactly the target's tokens."""
    lps, ns, hits = [], [], []
    for t in texts:
        words = t.split(" ")
        ctx, target = ENC.encode_ordinary(" ".join(words[:-1])), ENC.encode_ordinary(" " + words[-1])
        lp, n = ref_continuation(hf, ctx, target)
        keep = (ctx + target)[-(BLOCK + 1):][:-len(target)]  # the context the window leaves
        gen = greedy(hf, keep, len(target))
        lps.append(lp)
        ns.append(n)
        hits.append(gen == target)
    return lps, ns, hits


# ----------------------------------------------------------------------------------------------------------------
# HellaSwag and LAMBADA against the reference


def test_hellaswag_equals_reference_on_transformers_gpt2(models, tmp_path):
    hf, ours = models
    lines = write_hellaswag(tmp_path / "hellaswag_val.jsonl")
    items = evaluate.read_hellaswag(str(tmp_path / "hellaswag_val.jsonl"))
    r = evaluate.hellaswag(ours, GPT2Tok(), items, batch_size=8)
    lps, ns, (acc, acc_norm, acc_norm_chars) = ref_hellaswag(hf, lines)
    print("hellaswag ours", r["acc"], r["acc_norm"], r["acc_norm_chars"], "reference", acc, acc_norm, acc_norm_chars)
    assert r["n_tokens"] == ns
    assert close(r["logprobs"], lps), np.abs(np.array(r["logprobs"]) - np.array(lps)).max()
    assert (r["items"], r["acc"], r["acc_norm"], r["acc_norm_chars"]) == (len(lines), acc, acc_norm, acc_norm_chars)
    # item 3's context is longer than BLOCK tokens: cut on the left, its endings still scored whole
    assert r["truncated"] == 1 and ns[3] == [len(ENC.encode_ordinary(" " + e)) for e in lines[3]["endings"]]


def test_lambada_equals_reference_greedy_generate(models, tmp_path):
    hf, ours = models
    texts = lambada_texts(hf)
    write_lambada(tmp_path / "lambada_test.jsonl", texts)
    items = evaluate.read_lambada(str(tmp_path / "lambada_test.jsonl"))
    r = evaluate.lambada(ours, GPT2Tok(), items, batch_size=8)
    lps, ns, hits = ref_lambada(hf, texts)
    print(f"lambada ours acc {r['acc']:.4f} ppl_word {r['ppl_word']:.2f}; reference hits {sum(hits)}/{len(hits)}")
    assert r["greedy"] == hits and 0 < sum(hits) < len(hits)
    assert r["n_tokens"] == ns and max(ns) > 1  # some targets are several tokens
    assert close(r["logprobs"], lps)
    assert r["acc"] == sum(hits) / len(hits)
    assert math.isclose(r["ppl_word"], math.exp(-sum(lps) / len(lps)), rel_tol=1e-9)
    assert math.isclose(r["ppl_token"], math.exp(-sum(lps) / sum(ns)), rel_tol=1e-9)
    assert r["truncated"] == 1


def test_lambada_target_is_the_last_space_separated_word():
    assert evaluate.lambada_split("he said, \"go to the bank") == ("he said, \"go to the", " bank")
    assert evaluate.lambada_split("a b c\n") == ("a b", " c")


# ----------------------------------------------------------------------------------------------------------------
# Strided perplexity


@pytest.mark.parametrize("n,block,stride", [(2, 4, 4), (5, 4, 4), (9, 4, 4), (10, 4, 3), (50, 8, 1), (50, 8, 5),
                                            (33, 32, 32), (100, 16, 7)])
def test_strided_windows_score_every_token_once(n, block, stride):
    scored, min_ctx = [], []
    for start, end, first in evaluate.strided_windows(n, block, stride):
        assert 0 <= start and end - start <= block and end <= n - 1 and 0 <= first < end - start
        targets = list(range(start + first + 1, end + 1))  # ids[j] predicted from ids[start:j]
        scored += targets
        min_ctx += [j - start for j in targets]
    assert sorted(scored) == scored == list(range(1, n))  # each token but the first, once, in order
    # the context is as long as the window allows: the whole prefix in the first window, then >= block - stride + 1
    assert all(c >= min(j, block - stride + 1) for j, c in zip(range(1, n), min_ctx))


def ref_token_nlls(hf, ids, block, stride):
    """Written from the definition: target j (1 <= j < n) is scored by the first window that reaches it, the one
    starting at k * stride with k = max(0, ceil((j - block) / stride)), from the tokens ids[k * stride : j]. (One
    forward per window start: the causal model's prediction at j - 1 does not see the tokens after j - 1.)"""
    by_start = {}
    for j in range(1, len(ids)):
        by_start.setdefault(max(0, -(-(j - block) // stride)) * stride, []).append(j)
    nll = {}
    for s, js in by_start.items():
        assert max(js) - s <= block
        logp = hf_logprobs(hf, ids[s:max(js)])
        nll.update({j: -logp[j - 1 - s, ids[j]].item() for j in js})
    return np.array([nll[j] for j in range(1, len(ids))])


@pytest.mark.parametrize("stride", [BLOCK, 100, 37])
def test_perplexity_equals_reference_on_transformers_gpt2(models, stride):
    hf, ours = models
    text = corpus_text(3000)[:1400]
    ids = ENC.encode_ordinary(text)
    assert len(ids) > 2 * BLOCK + 10
    nlls = evaluate.token_nlls(ours, ids, stride=stride, batch_size=3)
    ref = ref_token_nlls(hf, ids, BLOCK, stride)
    assert close(nlls, ref), np.abs(nlls - ref).max()
    r = evaluate.perplexity(ours, GPT2Tok(), ids, stride=stride, batch_size=3)
    assert r["tokens"] == len(ids) - 1
    assert math.isclose(r["loss"], ref.mean(), rel_tol=1e-9) and math.isclose(r["ppl"], math.exp(ref.mean()),
                                                                               rel_tol=1e-9)
    n_bytes = len(ENC.decode(ids[1:]).encode("utf-8"))
    assert math.isclose(r["bits_per_byte"], ref.sum() / math.log(2) / n_bytes, rel_tol=1e-9)


def test_batched_equals_unbatched(models, tmp_path):
    hf, ours = models
    write_hellaswag(tmp_path / "h.jsonl")
    items = evaluate.read_hellaswag(str(tmp_path / "h.jsonl"))
    texts = [x["ctx"] + " " + x["endings"][0].split(" ")[0] for x in items]
    ids = ENC.encode_ordinary(corpus_text(3000)[:1400])
    one = (evaluate.hellaswag(ours, GPT2Tok(), items, batch_size=1), evaluate.lambada(ours, GPT2Tok(), texts, 1),
           evaluate.token_nlls(ours, ids, stride=50, batch_size=1))
    for bs in (3, 7):
        many = (evaluate.hellaswag(ours, GPT2Tok(), items, batch_size=bs),
                evaluate.lambada(ours, GPT2Tok(), texts, batch_size=bs), evaluate.token_nlls(ours, ids, 50, bs))
        assert close(many[0]["logprobs"], one[0]["logprobs"], 1e-12) and many[0]["n_tokens"] == one[0]["n_tokens"]
        assert close(many[1]["logprobs"], one[1]["logprobs"], 1e-12) and many[1]["greedy"] == one[1]["greedy"]
        assert close(many[2], one[2], 1e-12)
        assert (many[0]["acc_norm"], many[1]["acc"]) == (one[0]["acc_norm"], one[1]["acc"])


def test_smaller_stride_gives_lower_or_equal_loss_on_a_trained_model():
    """More context per token helps a model that learned to use it. The data: one random cycle of 40 tokens over 16
    symbols, repeated, so a token or two of context are ambiguous and a few more decide the next token. A tiny
    GPT-2 trained on it predicts almost perfectly except at the start of a window; non-overlapping windows score
    1 token in 32 with no context, strides below block_size give every token at least block_size - stride + 1.
    (Between two strides below block_size the differences are at the level of how well each position was trained,
    so only the comparison with block_size is asserted.)"""
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(16, (40,), generator=g).repeat(60)
    torch.manual_seed(0)
    model = Model(Config(block_size=32, vocab_size=16, n_layer=2, n_head=2, n_embd=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(400):
        ix = torch.randint(len(stream) - 33, (16,), generator=g)
        x = torch.stack([stream[i:i + 32] for i in ix])
        y = torch.stack([stream[i + 1:i + 33] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    val, tok = stream[:2000].tolist(), CharTok("abcdefghijklmnop")
    losses = {s: evaluate.perplexity(model, tok, val, stride=s, batch_size=64)["loss"] for s in (32, 16, 8, 1)}
    print({s: round(v, 5) for s, v in losses.items()}, "train loss", round(loss.item(), 4))
    assert loss.item() < 0.2  # trained: uniform is ln 16 = 2.8
    assert all(losses[s] <= losses[32] and losses[s] < 0.5 * losses[32] for s in (16, 8, 1))


# ----------------------------------------------------------------------------------------------------------------
# Bits per byte and per character: a model with flat logits makes every figure known in closed form


class FlatModel(nn.Module):
    """Logits all zero: every token costs exactly ln(vocab_size) nats."""

    def __init__(self, vocab_size, block_size):
        super().__init__()
        self.config = Config(block_size=block_size, vocab_size=vocab_size)
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, idx, targets=None):
        return self.w.expand(*idx.shape, self.config.vocab_size) * 0, None


def test_bits_per_byte_and_per_char_arithmetic():
    text = "naïve café — über Straße\nto be, or not to be: ça va?\n" * 3  # 2-byte and 3-byte characters
    tok = CharTok("".join(sorted(set(text))))
    V = tok.vocab_size
    r = evaluate.perplexity(FlatModel(V, 16), tok, tok.encode(text), stride=5)
    scored = text[1:]  # the first character has no context
    assert r["tokens"] == r["chars"] == len(scored) and r["bytes"] == len(scored.encode("utf-8")) > len(scored)
    assert math.isclose(r["loss"], math.log(V), rel_tol=1e-12) and math.isclose(r["ppl"], V, rel_tol=1e-12)
    assert math.isclose(r["bits_per_char"], math.log2(V), rel_tol=1e-12)
    assert math.isclose(r["bits_per_byte"], math.log2(V) * len(scored) / len(scored.encode("utf-8")), rel_tol=1e-12)


def test_end_of_text_separators_count_in_loss_but_not_in_bits_per_byte():
    docs = ["First document, naïve.", "Second one — longer, with a café.", "Third."]
    ids = ENC.encode_ordinary(docs[0]) + [ENC.eot_token] + ENC.encode_ordinary(docs[1]) + [ENC.eot_token] + \
        ENC.encode_ordinary(docs[2])
    V = ENC.n_vocab
    r = evaluate.perplexity(FlatModel(V, 8), GPT2Tok(), ids)
    text_tokens = len(ids) - 1 - 2
    n_bytes = len("".join(docs).encode("utf-8")) - len(ENC.decode(ids[:1]).encode("utf-8"))
    assert r["tokens"] == len(ids) - 1 and math.isclose(r["loss"], math.log(V), rel_tol=1e-12)
    assert r["bytes"] == n_bytes
    assert math.isclose(r["bits_per_byte"], text_tokens * math.log2(V) / n_bytes, rel_tol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line, no traceback


def one_line_error(capsys, fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("stride", [0, -3, BLOCK + 1, 2.5])
def test_stride_outside_1_to_block_size_is_one_line(models, capsys, stride):
    err = one_line_error(capsys, evaluate.token_nlls, models[1], list(range(300)), stride)
    assert f"--stride={stride}" in err and str(BLOCK) in err


def test_too_short_text_is_one_line(models, capsys):
    assert "at least 2" in one_line_error(capsys, evaluate.token_nlls, models[1], [5])


@pytest.mark.parametrize("line,why", [
    ("{not json", "line 3 is not valid JSON"),
    (json.dumps({**ROOF, "endings": ROOF["endings"][:3]}), "line 3: 'endings' is not a list of 4 texts"),
    (json.dumps({**ROOF, "label": 4}), "line 3: 'label' is 4"),
    (json.dumps({k: v for k, v in ROOF.items() if k != "ctx"}), "line 3: no 'ctx' text"),
    ("[1, 2]", "line 3: not a JSON object"),
])
def test_malformed_hellaswag_line_is_one_line(tmp_path, capsys, line, why):
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text(json.dumps(ROOF) + "\n\n" + line + "\n")  # a blank line 2 is skipped, line 3 is bad
    assert why in one_line_error(capsys, evaluate.read_hellaswag, str(path))


def test_malformed_lambada_line_is_one_line(tmp_path, capsys):
    path = tmp_path / "lambada_test.jsonl"
    path.write_text(json.dumps({"text": "a whole passage"}) + "\n" + json.dumps({"text": "oneword"}) + "\n")
    assert "line 2: 'text' has no space-separated last word" in one_line_error(capsys, evaluate.read_lambada, str(path))
    path.write_text(json.dumps({"txt": "a b"}) + "\n")
    assert "line 1: no 'text'" in one_line_error(capsys, evaluate.read_lambada, str(path))


def test_read_keeps_the_first_limit_items(tmp_path):
    lines = write_hellaswag(tmp_path / "h.jsonl")
    items = evaluate.read_hellaswag(str(tmp_path / "h.jsonl"), limit=4)
    assert [x["ctx"] for x in items] == [x["ctx"] for x in lines[:4]]
    assert items[0] == {"ctx": ROOF["ctx"], "endings": ROOF["endings"], "label": 3}


# Downloads fail at once, online or not: urllib sends them to a proxy that is not there.
NO_NET = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
          "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
BAD_ARGS = [
    (["--task=hellaswag"], "--ckpt is required"),
    (["--ckpt=out/x"], "--task is required"),
    (["--ckpt=out/x", "--task=helaswag"], "--task='helaswag' is not one of ppl, hellaswag, lambada; did you mean"),
    (["--ckpt=out/x", "--task=hellaswag", "--data_file=none.jsonl"],
     "--data_file=none.jsonl: no such file; pass the path of hellaswag's hellaswag_val.jsonl"),
    (["--ckpt=out/x", "--task=hellaswag"], "pass --data_file=path/to/hellaswag_val.jsonl"),  # no network
    (["--ckpt=out/x", "--task=lambada"], "pass --data_file=path/to/lambada_test.jsonl"),
    (["--ckpt=out/x", "--task=hellaswag", "--data_file=bad.jsonl"], "bad.jsonl line 2 is not valid JSON"),
    (["--ckpt=out/x", "--task=ppl"], "--task=ppl needs one of --data=DATASET"),
    (["--ckpt=out/x", "--task=ppl", "--data_file=a.txt", "--stride=0"], "--stride=0 must be a whole number"),
    (["--ckpt=out/x", "--task=lambada", "--stride=4"], "--stride is for --task=ppl"),
    (["--ckpt=out/x", "--task=hellaswag", "--data=shakespeare_char"], "--data is for --task=ppl"),
    (["--ckpt=out/x", "--task=ppl", "--data_file=none.txt"], "--data_file=none.txt: no such file"),
    (["--ckpt=out/x", "--task=ppl", "--data=nosuch"], "dataset 'nosuch' not found"),
    (["--ckpt=out/x", "--task=ppl", "--data=tiny", "--split=test"], "data/tiny/test.bin is missing"),
]


@pytest.mark.parametrize("args,why", BAD_ARGS)
def test_bad_settings_and_data_are_one_line_before_any_model_loads(workdir, monkeypatch, capsys, args, why):
    """All of these stop before a model is loaded (--ckpt=out/x does not exist): cheap mistakes cost nothing."""
    monkeypatch.chdir(workdir)
    for k, v in NO_NET.items():
        monkeypatch.setenv(k, v)
    (workdir / "bad.jsonl").write_text(json.dumps(ROOF) + "\n" + "{oops\n")
    assert why in one_line_error(capsys, eval_script.main, args)
    assert not (workdir / "data" / "eval").exists()  # a failed download leaves nothing behind


def test_cli_bad_input_is_one_line_without_traceback(tmp_path):
    """The same as a user sees it, from the command line: exit status 1, one line on stderr."""
    for args, why in (BAD_ARGS[2], BAD_ARGS[4]):
        p = run("eval.py", *args, cwd=tmp_path, env=NO_NET, check=False, timeout=120)
        err = p.stderr.strip()
        assert p.returncode == 1 and "Traceback" not in p.stderr and len(err.splitlines()) == 1, p.stderr
        assert err.startswith("error: ") and why in err


# ----------------------------------------------------------------------------------------------------------------
# The causality probe: eval.py refuses a model whose earlier predictions see later tokens


def test_check_causal_passes_gpt2_and_refuses_bert(models, capsys):
    evaluate.check_causal(models[1], "gpt2")  # returns quietly
    import models.bert as bert

    torch.manual_seed(0)
    encoder = bert.Model(bert.Config(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    err = one_line_error(capsys, evaluate.check_causal, encoder, "bert")
    assert "bert is not a causal language model" in err


# ----------------------------------------------------------------------------------------------------------------
# End to end, as a user runs it: eval.py on a train.py checkpoint and on a transformers directory (common/hf.py)


def result(p):
    """The JSON line eval.py prints last."""
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_cli_ppl_on_a_train_py_checkpoint_bin_and_text_agree(workdir):
    run("train.py", *TINY, "--out_dir=out", cwd=workdir)
    val = np.fromfile(workdir / "data" / "tiny" / "val.bin", dtype=np.uint16)
    chars = json.loads((workdir / "data" / "tiny" / "meta.json").read_text())["chars"]
    text = "".join(chars[i] for i in val)
    (workdir / "val.txt").write_text(text)
    a = result(run("eval.py", "--ckpt=out", "--task=ppl", "--data=tiny", "--device=cpu", cwd=workdir))
    b = result(run("eval.py", "--ckpt=out", "--task=ppl", "--data_file=val.txt", "--device=cpu", cwd=workdir))
    print(a)
    assert a["tokens"] == b["tokens"] == len(val) - 1 and a["stride"] == a["block_size"] == 32
    assert a["loss"] == b["loss"] and a["bits_per_byte"] == b["bits_per_byte"]  # the same ids by both routes
    assert 1.0 < a["loss"] < math.log(len(chars)) + 0.5  # 20 steps of training: well short of trained, not broken
    assert text.isascii() and a["bytes"] == a["chars"] == len(val) - 1
    assert math.isclose(a["bits_per_char"], a["loss"] / math.log(2), rel_tol=1e-12)  # characters are its tokens
    c = result(run("eval.py", "--ckpt=out", "--task=ppl", "--data=tiny", "--stride=8", "--limit=1000",
                   "--batch_size=5", "--device=cpu", cwd=workdir))
    assert (c["tokens"], c["stride"]) == (999, 8)
    p = run("eval.py", "--ckpt=out", "--task=ppl", "--data=tiny", "--stride=33", cwd=workdir, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "--stride=33 is more than the model's block_size (32)" in p.stderr


def test_cli_on_a_transformers_directory_equals_reference(models, tmp_path):
    """The tiny transformers GPT-2 saved with save_pretrained, read back by common/hf.py (in float32, its default):
    the three tasks from the command line against the float64 reference computed here."""
    hf, _ = models
    hf.save_pretrained(tmp_path / "tiny-gpt2")
    lines = write_hellaswag(tmp_path / "hellaswag_val.jsonl")
    texts = lambada_texts(hf)
    write_lambada(tmp_path / "lambada_test.jsonl", texts)
    (tmp_path / "some.txt").write_text(corpus_text(3000)[:1400])
    common = ["--ckpt=tiny-gpt2", "--device=cpu", "--dtype=float32", "--batch_size=5"]

    h = result(run("eval.py", *common, "--task=hellaswag", "--data_file=hellaswag_val.jsonl", cwd=tmp_path))
    lps, ns, (acc, acc_norm, acc_norm_chars) = ref_hellaswag(hf, lines)
    # float32 against float64: the choices agree when no two best endings are within rounding of each other
    for lp, n, x in zip(lps, ns, lines):
        for v in (lp, [a / b for a, b in zip(lp, n)], [a / len(e) for a, e in zip(lp, x["endings"])]):
            assert np.diff(sorted(v))[-1] > 1e-3, v
    assert (h["items"], h["acc"], h["acc_norm"], h["acc_norm_chars"]) == (len(lines), acc, acc_norm, acc_norm_chars)

    lam = result(run("eval.py", *common, "--task=lambada", "--data_file=lambada_test.jsonl", cwd=tmp_path))
    lps, ns, hits = ref_lambada(hf, texts)
    assert lam["items"] == len(texts) and lam["acc"] == sum(hits) / len(hits)
    assert math.isclose(lam["ppl_word"], math.exp(-sum(lps) / len(lps)), rel_tol=1e-4)  # float32 run

    ppl = result(run("eval.py", *common, "--task=ppl", "--data_file=some.txt", "--stride=37", cwd=tmp_path))
    ref = ref_token_nlls(hf, ENC.encode_ordinary(corpus_text(3000)[:1400]), BLOCK, 37)
    assert ppl["tokens"] == len(ref) and math.isclose(ppl["loss"], ref.mean(), rel_tol=1e-4)  # float32 run

    # A character bin read by this BPE model: decoded to text, encoded with GPT-2's BPE, the same bytes scored
    write_char_dataset(tmp_path / "data" / "chars", corpus_text(20_000))
    chars = json.loads((tmp_path / "data" / "chars" / "meta.json").read_text())["chars"]
    val = "".join(chars[i] for i in np.fromfile(tmp_path / "data" / "chars" / "val.bin", dtype=np.uint16))
    p = run("eval.py", *common, "--task=ppl", "--data=chars", cwd=tmp_path)
    ids = ENC.encode_ordinary(val)
    ref = ref_token_nlls(hf, ids, BLOCK, BLOCK)
    assert "the data's tokenizer (char) is not the model's" in p.stderr
    r = result(p)
    assert r["tokens"] == len(ids) - 1 and r["bytes"] == len(val.encode()) - len(ENC.decode(ids[:1]).encode())
    assert math.isclose(r["loss"], ref.mean(), rel_tol=1e-4)
