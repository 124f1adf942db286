"""prepare/text.py (any local corpus) and the hub scripts that share its code: tokens, separators, split, atomicity.

Needs tiktoken's gpt2 files: CI sets TIKTOKEN_CACHE_DIR. Everything runs offline on a few kB of generated text.
"""

import argparse
import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, load_dataset

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


# ----------------------------------------------------------------------------- hub datasets that are loading scripts

@pytest.fixture
def script_refusal(tmp_path):
    """The error the installed datasets raises for a loading script, produced offline from a local one, so these
    tests follow datasets if it rewords it."""
    d = tmp_path / "openwebtext"
    d.mkdir()
    (d / "openwebtext.py").write_text("# a loading script\n")
    with pytest.raises(Exception) as e:
        load_dataset(str(d), cache_dir=str(tmp_path / "hf"))
    return e.value


def fake_load_dataset(first_error=None):
    """A stand-in for load_dataset that records its calls: the first raises first_error if given; otherwise, and
    from then on, it returns a small corpus with a validation split."""
    calls = []

    def load(*args, **kwargs):
        calls.append((args, kwargs))
        if first_error is not None and len(calls) == 1:
            raise first_error
        return DatasetDict(train=Dataset.from_dict({"text": make_docs(20, seed=1)}),
                           validation=Dataset.from_dict({"text": make_docs(4, seed=2)}))
    return load, calls


@pytest.fixture
def fake_hub(monkeypatch):
    """The Hub looks reachable, and the listing of a parquet conversion says it is complete; load_dataset is faked
    by each test."""
    monkeypatch.setattr(text, "hub_reachable", lambda endpoint, repo: True)
    monkeypatch.setattr(text, "parquet_partial", lambda repo, folder: False)


def hub_args(tmp_path):
    return argparse.Namespace(streaming=False, num_proc=2, cache_dir=str(tmp_path / "hf"),
                              out_dir=str(tmp_path / "out"))


def test_refuses_script_by_type_and_message(script_refusal):
    assert text.refuses_script(script_refusal)
    try:  # an error raised from the refusal still is one
        raise ValueError("could not build the dataset") from script_refusal
    except ValueError as wrapped:
        assert text.refuses_script(wrapped)
    assert not text.refuses_script(ConnectionError(str(script_refusal)))  # the type matters, not just the words
    assert not text.refuses_script(RuntimeError("Couldn't reach the Hub"))


@pytest.mark.parametrize("script,argv,name,folder", [
    ("openwebtext", [], None, "plain_text"),  # the script's config is plain_text: that is its parquet folder
    ("fineweb_edu", ["--subset", "sample-10BT"], "sample-10BT", "sample-10BT"),
    ("tinystories", [], None, "default"),
])
def test_hub_script_falls_back_to_parquet(script, argv, name, folder, script_refusal, fake_hub, tmp_path,
                                          monkeypatch, capsys):
    module = importlib.import_module(f"prepare.{script}")
    load, calls = fake_load_dataset(first_error=script_refusal)
    monkeypatch.setattr(text, "load_dataset", load)
    cache = str(tmp_path / "hf")
    meta = module.main(argv + ["--out_dir", str(tmp_path / "out"), "--num_proc", "1", "--cache_dir", cache])
    common = {"streaming": False, "cache_dir": cache}
    assert calls == [
        ((module.REPO, name), common),  # the default revision first: the script may have been replaced by then
        ((module.REPO, "default"), {"revision": "refs/convert/parquet", "data_dir": folder, **common}),
    ]
    notice = [line for line in capsys.readouterr().out.splitlines() if "refs/convert/parquet" in line]
    assert len(notice) == 1 and "loading script" in notice[0] and f"{folder}/" in notice[0]
    assert "partial" not in notice[0]
    assert meta["train_tokens"] > 0 and meta["val_tokens"] > 0  # the converted documents went the usual way


def test_load_hub_fallback_notice_one_line(script_refusal, fake_hub, tmp_path, monkeypatch, capsys):
    load, calls = fake_load_dataset(first_error=script_refusal)
    monkeypatch.setattr(text, "load_dataset", load)
    monkeypatch.setattr(text, "parquet_partial", lambda repo, folder: True)
    train, val = text.load_hub("user/corpus", None, hub_args(tmp_path), "--data_files 'corpus/*'")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "refs/convert/parquet" in out[0] and "partial" in out[0]
    assert [kwargs.get("num_proc") for _, kwargs in calls] == [2, 2]  # both loads get the same options
    assert train.column_names == ["text"] and val is not None


def test_parquet_partial_reads_the_folder_names(monkeypatch):
    import huggingface_hub
    seen = []

    def tree(folders):
        def list_repo_tree(self, repo_id, path_in_repo=None, revision=None, repo_type=None, **kwargs):
            seen.append((repo_id, path_in_repo, revision, repo_type))
            if folders is None:
                raise ConnectionError("offline")
            return [argparse.Namespace(path=f"{path_in_repo}/{f}") for f in folders]
        return list_repo_tree

    for folders, partial in [(["partial-train"], True), (["train", "validation"], False), (None, None)]:
        monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_tree", tree(folders))
        assert text.parquet_partial("user/corpus", "plain_text") is partial
    assert set(seen) == {("user/corpus", "plain_text", "refs/convert/parquet", "dataset")}


def test_load_hub_no_fallback_when_default_revision_loads(fake_hub, tmp_path, monkeypatch, capsys):
    load, calls = fake_load_dataset()
    monkeypatch.setattr(text, "load_dataset", load)
    train, val = text.load_hub("user/corpus", "cfg", hub_args(tmp_path), "--data_files 'corpus/*'")
    assert calls == [(("user/corpus", "cfg"), {"streaming": False, "cache_dir": str(tmp_path / "hf"), "num_proc": 2})]
    assert capsys.readouterr().out == ""
    assert len(train) == 20 and len(val) == 4


@pytest.mark.parametrize("error,says", [
    (ConnectionError("Couldn't reach 'user/corpus' on the Hub (ConnectionError)"), "unreachable"),
    (RuntimeError("simulated crash in the download"), "could not load it"),
    (ValueError("BuilderConfig 'cfg' not found. Available: ['default']"), "could not load it"),
])
def test_load_hub_other_errors_are_not_script_refusals(error, says, fake_hub, tmp_path, monkeypatch, capsys):
    load, calls = fake_load_dataset(first_error=error)
    monkeypatch.setattr(text, "load_dataset", load)
    with pytest.raises(SystemExit) as e:
        text.load_hub("user/corpus", None, hub_args(tmp_path), "--data_files 'corpus/*'")
    assert e.value.code == 1 and len(calls) == 1  # no second try at the parquet conversion
    captured = capsys.readouterr()
    assert "refs/convert/parquet" not in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: user/corpus:") and says in err[0] and str(error) in err[0]


def test_load_hub_fallback_failure_one_line(script_refusal, fake_hub, tmp_path, monkeypatch, capsys):
    calls = []

    def load(*args, **kwargs):  # the script is refused, and the Hub has no parquet conversion either
        calls.append(kwargs.get("revision"))
        raise script_refusal if len(calls) == 1 else FileNotFoundError("Revision 'refs/convert/parquet' not found")
    monkeypatch.setattr(text, "load_dataset", load)
    with pytest.raises(SystemExit) as e:
        text.load_hub("user/corpus", None, hub_args(tmp_path), "--data_files 'corpus/*'")
    assert e.value.code == 1 and calls == [None, "refs/convert/parquet"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: user/corpus: it is a loading script")
    assert "not found" in err[0] and "python prepare/text.py --data_files" in err[0]


# ----------------------------------------------------------------------------- prepare/gutenberg.py

PG_HEADER = ("\ufeffThe Project Gutenberg eBook of {title}\r\n\r\nThis ebook is for the use of anyone...\r\n\r\n"
             "Title: {title}\r\n\r\nAuthor: {author}\r\n\r\nRelease date: May 1, 1998 [eBook #{id}]\r\n\r\n"
             "*** START OF THE PROJECT GUTENBERG EBOOK {upper} ***\r\n")
PG_FOOTER = ("\r\n*** END OF THE PROJECT GUTENBERG EBOOK {upper} ***\r\n\r\nUpdated editions will replace the previous"
             " one.\r\n*** START: FULL LICENSE ***\r\nTHE FULL PROJECT GUTENBERG LICENSE\r\n")


def pg_file(book_id, title, author, body):
    fields = dict(id=book_id, title=title, author=author, upper=title.upper())
    text = "\r\n\r\n" + body.replace("\n", "\r\n") + "\r\n\r\n"
    return PG_HEADER.format(**fields) + text + PG_FOOTER.format(**fields)


def test_gutenberg_strips_header_and_footer():
    from prepare import gutenberg

    body = "CHAPTER I.\n\nIt is a truth universally acknowledged... “quoted” naïve.\n\nTHE END"
    title, author, text = gutenberg.strip_gutenberg(pg_file(1342, "Pride and Prejudice", "Jane Austen", body))
    assert (title, author, text) == ("Pride and Prejudice", "Jane Austen", body)
    # older files: THIS, no space after the stars, E-BOOK; no Title/Author lines
    old = ("header\n***START OF THIS PROJECT GUTENBERG E-BOOK FOO***\nthe book\n"
           "***END OF THIS PROJECT GUTENBERG E-BOOK FOO***\nlicense")
    assert gutenberg.strip_gutenberg(old) == ("", "", "the book")
    assert gutenberg.strip_gutenberg("no markers here\nat all") is None
    assert gutenberg.strip_gutenberg(body + "\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\n") is None


def gutenberg_books(n=23):
    rng = np.random.default_rng(3)
    return [dict(author=f"Author {i % 5}", title=f"Book {i:02d}", text=" ".join(make_docs(3, seed=i)) + f" ({i})")
            for i in rng.permutation(n)]


def test_gutenberg_offline_shards(tmp_path):
    import gzip

    from prepare import gutenberg

    books = gutenberg_books()
    shards = tmp_path / "shards"
    shards.mkdir()
    for k, part in enumerate((books[:10], books[10:])):  # one gzipped shard, one plain
        opener = gzip.open if k == 0 else open
        with opener(shards / f"books-{k:02d}.jsonl{'.gz' if k == 0 else ''}", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(b) + "\n" for b in part)
    out = tmp_path / "out"
    meta = gutenberg.main(["--input", str(shards), "--out_dir", str(out), "--num_proc", "1"])
    ordered = sorted(books, key=lambda b: (b["author"], b["title"]))
    assert read_docs(out, "val") == [b["text"] for b in ordered[::10]]  # every 10th book, whole, EOT after each
    assert read_docs(out, "train") == [b["text"] for i, b in enumerate(ordered) if i % 10]
    assert (meta["books"], meta["authors"], meta["val_docs"], meta["train_docs"]) == (23, 5, 3, 20)
    assert meta["train_tokens"] + meta["val_tokens"] == n_tokens([b["text"] for b in books])
    with open(out / "meta.json") as f:
        assert json.load(f) == meta and meta["tokenizer"] == "gpt2"
    # the same books in other shards give the same bins
    again = tmp_path / "again"
    again.mkdir()
    with open(again / "all.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(b) + "\n" for b in reversed(books))
    gutenberg.main(["--input", str(again), "--out_dir", str(tmp_path / "out2"), "--num_proc", "1"])
    assert (out / "val.bin").read_bytes() == (tmp_path / "out2" / "val.bin").read_bytes()
    # characters: the same split, one token per character
    chars = tmp_path / "chars"
    meta = gutenberg.main(["--input", str(shards), "--out_dir", str(chars), "--tokenizer", "char"])
    vocab = meta["chars"]
    val = "".join(vocab[i] for i in np.fromfile(chars / "val.bin", dtype=np.uint16))
    assert val == "".join(b["text"] + "\n\n" for b in ordered[::10]) and meta["vocab_size"] == len(vocab)


def test_gutenberg_download_path_offline(tmp_path, monkeypatch):
    """The online path with urlopen faked: each book fetched once, cached, stripped; a file without markers and a
    book the site does not have (404) are left out with a note."""
    import io

    from prepare import gutenberg

    fetched = []

    def urlopen(req, timeout):
        book_id = int(req.full_url.rsplit("pg", 1)[1].split(".")[0])
        assert req.full_url == gutenberg.URL.format(id=book_id)
        fetched.append(book_id)
        if book_id == 99:
            return io.BytesIO(b"no markers")
        if book_id == 98:
            raise gutenberg.urllib.error.HTTPError(req.full_url, 404, "Not Found", {}, None)
        return io.BytesIO(pg_file(book_id, f"Title {book_id}", f"Author {book_id % 3}",
                                  f"The text of book {book_id}.").encode("utf-8"))

    monkeypatch.setattr(gutenberg.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(gutenberg, "BOOKS", list(range(1, 12)) + [98, 99])
    out = tmp_path / "out"
    meta = gutenberg.main(["--out_dir", str(out), "--num_proc", "1"])
    assert meta["books"] == 11 and meta["source"] == "gutenberg.org"
    docs = read_docs(out, "train") + read_docs(out, "val")
    assert sorted(docs) == sorted(f"The text of book {i}." for i in range(1, 12))
    assert sorted(os.listdir(out / "download")) == sorted(f"pg{i}.txt" for i in list(range(1, 12)) + [99])
    gutenberg.main(["--out_dir", str(out), "--num_proc", "1"])
    assert len(fetched) == 14 and fetched.count(98) == 2  # the second run read the cache (a 404 is asked again)


def test_gutenberg_bad_input_one_line(tmp_path, capsys):
    from prepare import gutenberg

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jsonl").write_text('{"title": "x"}\n')
    for argv, says in [(["--input", str(tmp_path / "nope")], "no such folder"),
                       (["--input", str(tmp_path / "empty")], "no *.jsonl"),
                       (["--input", str(tmp_path / "bad")], 'line 1: not a JSON object with a "text" field'),
                       (["--input", str(tmp_path / "bad"), "--val_every", "1"], "at least 2")]:
        with pytest.raises(SystemExit) as e:
            gutenberg.main(argv + ["--out_dir", str(tmp_path / "out")])
        assert e.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err
    assert not (tmp_path / "out" / "train.bin").exists()
