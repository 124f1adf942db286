"""Project Gutenberg books (public-domain English) with the GPT-2 BPE tokenizer, or as characters: the corpus for
studies that need more than one epoch of Tiny Shakespeare (the scaling sweep: common/scaling.py).

python prepare/gutenberg.py [--out_dir data/gutenberg] [--val_every 10] [--num_proc N]      # download BOOKS
python prepare/gutenberg.py --input ../shared/data/gutenberg [...]                            # offline: shards
python prepare/gutenberg.py --tokenizer char --input ../shared/data/gutenberg                 # data/gutenberg_char

Online, the books in BOOKS below are downloaded from https://www.gutenberg.org/cache/epub/<id>/pg<id>.txt (each
kept under out_dir/download/, so an interrupted download resumes), their title and author read from the header,
and the Project Gutenberg license header and footer cut off (the "*** START OF ..." and "*** END OF ..." lines and
everything outside them). Offline, --input names a folder of JSON-lines shards (*.jsonl or *.jsonl.gz), one book
per line with "author", "title" and "text" (header and footer already cut), as in ../shared/data/gutenberg (301
books, 72 authors, ~100M characters). Either way the books then go through prepare/text.py's pipeline: GPT-2 BPE
(tiktoken, num_proc processes), an end-of-text token after each book, and validation split off by whole books:
the books are put in a fixed order (author, then title; ties keep their input order) and every val_every-th one
(the 1st, the 11th, ...) goes to val.bin. meta.json records the counts of books, authors and tokens.

--tokenizer char writes data/gutenberg_char instead: one token per character (the vocabulary is every character
of the books, ~320), books separated by a blank line, the same split. With GPT-2's 50K-token vocabulary the
output layer is most of a tiny model's compute; with characters the blocks are (README "Compute-optimal scaling").
"""

import argparse
import glob
import gzip
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

from prepare.bins import atomic_write, die, write_bin, write_meta  # noqa: E402
from prepare.text import gpt2, prepare  # noqa: E402

URL = "https://www.gutenberg.org/cache/epub/{id}/pg{id}.txt"

# Well-known public-domain books, by Project Gutenberg ebook id (title and author are read from each file's header).
BOOKS = [
    1342, 158, 161, 141, 105, 121,  # Austen: Pride and Prejudice, Emma, Sense and Sensibility, Mansfield Park,
    #                                 Persuasion, Northanger Abbey
    98, 1400, 46, 730, 766,  # Dickens: A Tale of Two Cities, Great Expectations, A Christmas Carol, Oliver Twist,
    #                          David Copperfield
    74, 76,  # Twain: The Adventures of Tom Sawyer, Adventures of Huckleberry Finn
    1661, 2852, 244, 2097,  # Doyle: The Adventures of Sherlock Holmes, The Hound of the Baskervilles, A Study in
    #                         Scarlet, The Sign of the Four
    35, 36, 5230, 159,  # Wells: The Time Machine, The War of the Worlds, The Invisible Man, The Island of Dr Moreau
    84,  # Mary Shelley: Frankenstein
    11,  # Carroll: Alice's Adventures in Wonderland
    2701,  # Melville: Moby Dick
    345,  # Stoker: Dracula
    1260,  # Charlotte Brontë: Jane Eyre
    768,  # Emily Brontë: Wuthering Heights
    174, 844,  # Wilde: The Picture of Dorian Gray, The Importance of Being Earnest
    43, 120,  # Stevenson: Strange Case of Dr Jekyll and Mr Hyde, Treasure Island
    215, 910,  # London: The Call of the Wild, White Fang
    1184, 1257,  # Dumas: The Count of Monte Cristo, The Three Musketeers
    2600, 1399,  # Tolstoy: War and Peace, Anna Karenina
    2554, 28054,  # Dostoevsky: Crime and Punishment, The Brothers Karamazov
    219,  # Conrad: Heart of Darkness
    1952,  # Gilman: The Yellow Wallpaper
    16,  # Barrie: Peter Pan
    55,  # Baum: The Wonderful Wizard of Oz
    113,  # Burnett: The Secret Garden
    514,  # Alcott: Little Women
    25344,  # Hawthorne: The Scarlet Letter
    829, 1080,  # Swift: Gulliver's Travels, A Modest Proposal
    521,  # Defoe: Robinson Crusoe
    2814, 4217,  # Joyce: Dubliners, A Portrait of the Artist as a Young Man
    1232,  # Machiavelli: The Prince
    1497,  # Plato: The Republic
    2542,  # Ibsen: A Doll's House
    5200,  # Kafka: Metamorphosis
    996,  # Cervantes: Don Quixote
    135,  # Hugo: Les Misérables
    2591,  # Grimm: Grimms' Fairy Tales
    1322,  # Whitman: Leaves of Grass
    205,  # Thoreau: Walden
    23,  # Douglass: Narrative of the Life of Frederick Douglass
    2680,  # Marcus Aurelius: Meditations
    3825,  # Shaw: Pygmalion
    1228,  # Darwin: On the Origin of Species
    16328,  # Beowulf
    20203,  # Franklin: Autobiography
    1998,  # Nietzsche: Thus Spake Zarathustra
    408,  # Du Bois: The Souls of Black Folk
]

# The license header ends with a line "*** START OF THE (or THIS) PROJECT GUTENBERG EBOOK <TITLE> ***" and the footer
# starts with "*** END OF ...". Older files spell it "EBOOK" or "E-BOOK", with or without spaces after the stars.
START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.IGNORECASE | re.MULTILINE)
END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.IGNORECASE | re.MULTILINE)


def strip_gutenberg(raw):
    """A Project Gutenberg .txt file -> (title, author, the book's text without the license header and footer), or
    None when either marker line is missing. Line ends become \\n and the text is stripped of surrounding blanks."""
    raw = raw.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    start, end = START.search(raw), END.search(raw)
    if start is None or end is None or end.start() < start.end():
        return None
    header = raw[:start.start()]

    def field(name):
        m = re.search(rf"^{name}:[ \t]*(.+)$", header, re.MULTILINE)
        return m.group(1).strip() if m else ""

    return field("Title"), field("Author"), raw[start.end():end.start()].strip()


def download(ids, cache_dir):
    """The books as dicts (author, title, text, id), each fetched once into cache_dir/pg<id>.txt."""
    os.makedirs(cache_dir, exist_ok=True)
    books = []
    for i, book_id in enumerate(ids):
        path = os.path.join(cache_dir, f"pg{book_id}.txt")
        if not os.path.isfile(path):
            url = URL.format(id=book_id)
            req = urllib.request.Request(url, headers={"User-Agent": "nanoevo prepare/gutenberg.py"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    data = r.read()
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    die(f"could not download {url} (HTTP {e.code}); try again later, or offline give a folder of "
                        f"JSON-lines shards: python prepare/gutenberg.py --input ../shared/data/gutenberg")
                print(f"pg{book_id}: not found at {url}, left out")
                continue
            except OSError as e:
                die(f"could not download {url} ({e.__class__.__name__}); offline, give a folder of JSON-lines "
                    f"shards instead: python prepare/gutenberg.py --input ../shared/data/gutenberg")
            with atomic_write(path) as f:
                f.write(data)
        with open(path, encoding="utf-8", errors="replace") as f:
            parsed = strip_gutenberg(f.read())
        if parsed is None:
            print(f"pg{book_id}: no '*** START OF' / '*** END OF' marker lines, left out")
            continue
        title, author, text = parsed
        books.append(dict(author=author, title=title, text=text, id=book_id))
        print(f"[{i + 1}/{len(ids)}] pg{book_id}: {title} ({author}), {len(text):,} characters", flush=True)
    return books


def read_shards(folder):
    """Every book of the *.jsonl / *.jsonl.gz files in folder (in sorted file order, then line order)."""
    if not os.path.isdir(folder):
        die(f"--input {folder}: no such folder (give the folder that holds the books-NN.jsonl.gz shards)")
    files = sorted(glob.glob(os.path.join(folder, "*.jsonl")) + glob.glob(os.path.join(folder, "*.jsonl.gz")))
    if not files:
        die(f"--input {folder}: no *.jsonl or *.jsonl.gz files in it")
    books = []
    for path in files:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    book = json.loads(line)
                    text = book["text"]
                except (ValueError, KeyError, TypeError) as e:
                    die(f"{path}, line {n}: not a JSON object with a \"text\" field "
                        f"({'no ' + str(e) if isinstance(e, KeyError) else e.__class__.__name__})")
                books.append(dict(author=str(book.get("author") or ""), title=str(book.get("title") or ""),
                                  text=text if isinstance(text, str) else ""))
    return books


def split_books(books, val_every):
    """(train, val): the books in a fixed order (author, title; ties keep their input order), every val_every-th
    one (0, val_every, 2 val_every, ...) to val. Deterministic, and independent of how the books are sharded."""
    order = sorted(range(len(books)), key=lambda i: (books[i]["author"], books[i]["title"], i))
    val = [books[i] for k, i in enumerate(order) if k % val_every == 0]
    train = [books[i] for k, i in enumerate(order) if k % val_every != 0]
    return train, val


def write_chars(train, val, out_dir, source, t_start):
    """Character-level bins: ids index the sorted characters of all the books; books end with a blank line."""
    os.makedirs(out_dir, exist_ok=True)
    codes = {s: np.frombuffer("".join(b["text"] + "\n\n" for b in books).encode("utf-32-le"), dtype=np.uint32)
             for s, books in (("train", train), ("val", val))}
    chars = np.unique(np.concatenate(list(codes.values())))
    meta = {"vocab_size": len(chars), "tokenizer": "char", "chars": "".join(map(chr, chars)), "source": source}
    for s, c in codes.items():
        write_bin(os.path.join(out_dir, f"{s}.bin"), np.searchsorted(chars, c), len(chars))
        meta[f"{s}_tokens"], meta[f"{s}_docs"] = len(c), len(train if s == "train" else val)
    seconds = time.time() - t_start
    print(f"{out_dir}: train {meta['train_tokens']:,} characters ({meta['train_docs']} books), val "
          f"{meta['val_tokens']:,} ({meta['val_docs']} books), vocab {len(chars)}; {seconds:.1f} s")
    return meta


def main(argv=None):
    t_start = time.time()
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--input", help="a folder of JSON-lines shards (author, title, text per line); else download")
    p.add_argument("--tokenizer", choices=["gpt2", "char"], default="gpt2",
                   help="GPT-2 BPE (default, data/gutenberg) or characters (data/gutenberg_char)")
    p.add_argument("--out_dir", help="default: data/gutenberg, or data/gutenberg_char with --tokenizer char")
    p.add_argument("--val_every", type=int, default=10, help="every k-th book (fixed order) goes to val (default 10)")
    p.add_argument("--num_proc", type=int, default=os.cpu_count() or 1, help="tokenizer processes (default: cores)")
    args = p.parse_args(argv)
    if args.num_proc < 1:
        die(f"--num_proc {args.num_proc}: must be at least 1")
    if args.val_every < 2:
        die(f"--val_every {args.val_every}: must be at least 2 (1 would put every book in val)")
    args.out_dir = args.out_dir or ("data/gutenberg_char" if args.tokenizer == "char" else "data/gutenberg")
    if args.tokenizer == "gpt2":
        gpt2()  # fail early, before any download, if the tokenizer is missing
    if args.input:
        books, source = read_shards(args.input), f"local: {args.input}"
    else:
        books, source = download(BOOKS, os.path.join(args.out_dir, "download")), "gutenberg.org"
    books = [b for b in books if b["text"].strip()]
    if len(books) < args.val_every:
        die(f"{len(books)} non-empty book(s): need at least --val_every={args.val_every} to split off one val book")
    train, val = split_books(books, args.val_every)

    if args.tokenizer == "char":
        meta = write_chars(train, val, args.out_dir, source, t_start)
    else:
        from datasets import Dataset

        args.streaming = False  # what prepare() reads from the shared options
        meta = prepare(Dataset.from_dict({"text": [b["text"] for b in train]}),
                       Dataset.from_dict({"text": [b["text"] for b in val]}), args, source, t_start)
    meta.update(books=len(books), authors=len({b["author"] for b in books}), val_every=args.val_every,
                characters=sum(len(b["text"]) for b in books))
    write_meta(args.out_dir, meta)  # again, with the book counts (atomic: the bins are already complete)
    print(f"{len(books)} books by {meta['authors']} authors ({meta['characters']:,} characters); "
          f"{len(val)} val books (every {args.val_every}th); {time.time() - t_start:.1f} s in all")
    return meta


if __name__ == "__main__":
    main()
