"""prepare/text.py (any local corpus) and the hub scripts that share its code: tokens, separators, split, atomicity.

Needs tiktoken's gpt2 files: CI sets TIKTOKEN_CACHE_DIR. Everything runs offline on a few kB of generated text.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from prepare import text  # noqa: E402

EOT = 50256


def make_docs(n, seed):
    rng = np.random.default_rng(seed)
    words = ["the", "king", "said", "naïve", "café", "😀", "thou", "art", "\n", "  ", "ROMEO:", "é", "1234", "-"]
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(n)]


@pytest.fixture
def corpus(tmp_path):
    """Two .jsonl files, a .parquet and two .txt files (one document each); the text sits in column "content"."""
    d = tmp_path / "corpus"
    d.mkdir()
    docs = make_docs(40, seed=0) + ["a literal <|endoftext|> stays text", "multi\n\nparagraph\n"]
    for i, part in enumerate((docs[:15], docs[15:25])):
        with open(d / f"part{i}.jsonl", "w", encoding="utf-8") as f:
            for j, doc in enumerate(part):
                f.write(json.dumps({"id": j, "content": doc}) + "\n")
    pq.write_table(pa.table({"content": docs[25:40], "n": list(range(15))}), d / "part.parquet")
    for i, doc in enumerate(docs[40:]):
        (d / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    return d, docs


def read_docs(out_dir, split):
    """The documents of one bin, decoded: the bin must end with end-of-text, which separates the documents."""
    ids = np.fromfile(os.path.join(out_dir, f"{split}.bin"), dtype=np.uint16)
    assert len(ids) > 0 and ids[-1] == EOT
    cuts = np.flatnonzero(ids == EOT)
    enc = text.gpt2()
    return [enc.decode(ids[a + 1:b].tolist()) for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]


def n_tokens(docs):
    enc = text.gpt2()
    return sum(len(enc.encode_ordinary(d)) + 1 for d in docs)


def test_local_corpus_num_proc_2(corpus, tmp_path):
    d, docs = corpus
    out = tmp_path / "out"
    meta = text.main(["--data_files", str(d / "*.jsonl"), str(d / "*.parquet"), str(d / "doc*.txt"),
                      "--text_column", "content", "--out_dir", str(out), "--val_fraction", "0.1",
                      "--num_proc", "2", "--cache_dir", str(tmp_path / "hf")])
    train, val = read_docs(out, "train"), read_docs(out, "val")
    assert sorted(train + val) == sorted(docs)  # every document whole, exactly once, across the two bins
    assert len(val) == math.ceil(0.1 * len(docs))  # split by whole documents
    assert "a literal <|endoftext|> stays text" in train + val  # encode_ordinary: no EOT from the text itself
    with open(out / "meta.json") as f:
        assert json.load(f) == meta
    assert meta["vocab_size"] == 50257 and meta["tokenizer"] == "gpt2"
    assert meta["train_tokens"] == os.path.getsize(out / "train.bin") // 2
    assert meta["val_tokens"] == os.path.getsize(out / "val.bin") // 2
    assert meta["train_tokens"] + meta["val_tokens"] == n_tokens(docs)
    assert (meta["train_docs"], meta["val_docs"]) == (len(train), len(val))
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]


def test_streaming_and_own_val_split(corpus, tmp_path):
    d, docs = corpus
    # --val_files: the corpus's own validation split, in file order
    out = tmp_path / "own"
    text.main(["--data_files", str(d / "part0.jsonl"), "--val_files", str(d / "part1.jsonl"), "--text_column",
               "content", "--out_dir", str(out), "--num_proc", "2", "--streaming", "--cache_dir", str(tmp_path / "hf")])
    assert read_docs(out, "train") == docs[:15] and read_docs(out, "val") == docs[15:25]
    # --val_fraction while streaming: every k-th document (the first included) goes to val
    out = tmp_path / "every"
    meta = text.main(["--data_files", str(d / "*.jsonl"), "--text_column", "content", "--out_dir", str(out),
                      "--val_fraction", "0.2", "--num_proc", "2", "--streaming", "--cache_dir", str(tmp_path / "hf")])
    assert read_docs(out, "val") == docs[:25][::5]
    assert read_docs(out, "train") == [x for i, x in enumerate(docs[:25]) if i % 5]
    assert meta["train_tokens"] + meta["val_tokens"] == n_tokens(docs[:25])


def fail_on_call(n, fn):
    calls = []

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("simulated crash mid-way")
        return fn(*a, **k)
    return wrapped


@pytest.mark.parametrize("streaming", [False, True])
def test_interrupted_write_leaves_no_bins(corpus, tmp_path, monkeypatch, streaming):
    d, docs = corpus
    out = tmp_path / "out"
    argv = ["--data_files", str(d / "*.jsonl"), "--text_column", "content", "--out_dir", str(out),
            "--num_proc", "1", "--cache_dir", str(tmp_path / "hf")] + (["--streaming"] if streaming else [])
    monkeypatch.setattr(text, "BATCH_DOCS", 4)  # several write steps, so the crash comes after some were written
    original = {"tokenize": text.tokenize, "batch_ids": text.batch_ids}
    crash = "tokenize" if streaming else "batch_ids"  # streaming tokenizes as it writes; otherwise tokenize first

    monkeypatch.setattr(text, crash, fail_on_call(3, original[crash]))
    with pytest.raises(RuntimeError, match="simulated"):
        text.main(argv)
    assert os.listdir(out) == []  # no bin, no meta.json, no temporary file left behind

    monkeypatch.setattr(text, crash, original[crash])
    text.main(argv)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    monkeypatch.setattr(text, crash, fail_on_call(3, original[crash]))
    with pytest.raises(RuntimeError, match="simulated"):
        text.main(argv)
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before  # the previous complete run survives


def test_bad_arguments_one_line(corpus, tmp_path, capsys):
    d, _ = corpus
    for argv, says in [(["--data_files", str(d / "*.csv")], "no such file"),
                       (["--data_files", str(d / "*.jsonl")], "no column 'text'"),
                       (["--data_files", str(d / "*.jsonl"), "--val_fraction", "1.5"], "between 0 and 1")]:
        with pytest.raises(SystemExit) as e:
            text.main(argv + ["--out_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "hf")])
        assert e.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error:") and says in err[-1]
    assert not (tmp_path / "out" / "train.bin").exists()


def run_script(script, *args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "prepare", script), *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def test_text_script_subprocess(corpus, tmp_path):
    d, docs = corpus
    out = tmp_path / "out"
    p = run_script("text.py", "--data_files", str(d / "doc*.txt"), str(d / "*.parquet"), "--text_column", "content",
                   "--txt_sample_by", "paragraph", "--out_dir", str(out), "--num_proc", "2",
                   "--cache_dir", str(tmp_path / "hf"))
    assert p.returncode == 0, p.stderr
    assert "docs/s" in p.stdout and "tokens/s" in p.stdout and "Traceback" not in p.stderr
    expected = docs[25:40] + [docs[40], "multi", "paragraph\n"]  # .txt paragraphs: split on blank lines
    assert sorted(read_docs(out, "train") + read_docs(out, "val")) == sorted(expected)


@pytest.mark.parametrize("script,env", [
    ("openwebtext.py", {"HF_HUB_OFFLINE": "1"}),
    ("fineweb_edu.py", {"HF_HUB_OFFLINE": "1"}),
    ("tinystories.py", {"HF_HUB_OFFLINE": "1"}),
    ("tinystories.py", {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}),  # online, hub refuses
])
def test_hub_script_offline_one_line(script, env, tmp_path):
    out = tmp_path / "out"
    p = run_script(script, "--out_dir", str(out), "--num_proc", "2", env={"HF_HOME": str(tmp_path / "hf"), **env})
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("error:") and "unreachable" in lines[0]
    assert "python prepare/text.py --data_files" in lines[0]
    assert not (out / "train.bin").exists()
