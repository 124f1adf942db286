"""
Generate text from a checkpoint written by train.py, or from Hugging Face weights (common/hf.py):

    python sample.py --ckpt=out/shakespeare_char --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --ckpt=hf:gpt2 --start="The meaning of life is"      # the hub, or its local cache
    python sample.py --ckpt=path/to/dir                                  # config.json + model.safetensors

Settings are written --key=value, as for train.py and bench.py. The model file and its config come from the
checkpoint (its model_name and model_config, or config.json's model_type), the tokenizer from the dataset meta stored
beside them (or the checkpoint's own). Decoding is incremental: each model's generate() keeps a KV cache or a
recurrent state (a masked LM re-encodes instead).

A prompt holding [MASK] markers (that literal text) is filled instead of continued, by a model that has fill()
(the masked LM, models/bert.py): each marker is one token, filled left to right, and the prompt is printed filled;
max_new_tokens is not used. The markers are split out before tokenizing (a character tokenizer would otherwise read
six characters):

    python sample.py --ckpt=out/bert_shakespeare_char --start="To be, or [MASK][MASK][MASK] to be" --temperature=0
"""

import os
import sys
import time

import torch

from common import die
from common.devices import autocast_for, pick_device, pick_dtype
from common.hf import load_model
from common.settings import parse_args

DEFAULTS = dict(
    ckpt="",  # a checkpoint file, the out_dir holding ckpt.pt, hf:<model id>, or a transformers directory
    block_size=None,  # crop the context below the checkpoint's (and its KV cache: Llama 3's config says 131072)
    start="\n",  # the prompt, or FILE:path to read it from a file
    num_samples=3,
    max_new_tokens=500,
    temperature=0.8,  # 0 = greedy
    top_k=200,  # keep the k most likely tokens (1 = greedy); None keeps them all
    top_p=None,  # nucleus sampling: keep the smallest set of tokens whose probability reaches top_p
    seed=1337,
    device="auto",
    dtype="auto",
)
MASK = "[MASK]"  # a marker in --start: a token for the model's fill() to choose


def main(argv):
    args = parse_args(argv, DEFAULTS, "sample.py")
    # Checked here, before a checkpoint is loaded, so a typo costs nothing (generate() would raise a ValueError).
    if not args["ckpt"]:
        die("--ckpt is required: a checkpoint file or the out_dir holding ckpt.pt, e.g. --ckpt=out/shakespeare_char, "
            "or Hugging Face weights: --ckpt=hf:gpt2 or a directory holding config.json and model.safetensors")
    if args["max_new_tokens"] < 0:
        die(f"--max_new_tokens={args['max_new_tokens']} must be 0 or more")
    if args["num_samples"] < 1:
        die(f"--num_samples={args['num_samples']} must be at least 1")
    if args["temperature"] < 0:
        die(f"--temperature={args['temperature']} must be 0 (greedy) or more")
    if args["top_k"] is not None and (not isinstance(args["top_k"], int) or args["top_k"] < 1):
        die(f"--top_k={args['top_k']} must be at least 1 (1 is greedy; --top_k=None keeps every token)")
    if args["top_p"] is not None and not (isinstance(args["top_p"], (int, float)) and 0 < args["top_p"] <= 1):
        die(f"--top_p={args['top_p']} must be in (0, 1] (1 keeps every token)")

    device = pick_device(args["device"])
    autocast = autocast_for(device, pick_dtype(args["dtype"], device))
    model, model_name, tok = load_model(args["ckpt"], device, block_size=args["block_size"])
    torch.manual_seed(args["seed"])

    start = args["start"]
    if start.startswith("FILE:"):
        path = start[len("FILE:"):]
        if not os.path.isfile(path):
            die(f"--start={start}: no such file")
        with open(path, encoding="utf-8") as f:
            start = f.read()
    fill = MASK in start
    if fill and not hasattr(model, "fill"):
        die(f"--start holds {MASK} markers, but models/{model_name}.py has no fill() to fill them (a masked "
            f"LM such as models/bert.py has); remove them to continue the text")
    pieces = [tok.encode(piece) for piece in start.split(MASK)]
    ids = pieces[0] + [i for piece in pieces[1:] for i in [model.mask_id] + piece] if fill else pieces[0]
    if not ids:
        die("--start is empty; give at least one character or token")
    x = torch.tensor([ids], dtype=torch.long, device=device)
    sampling = dict(temperature=args["temperature"], top_k=args["top_k"], top_p=args["top_p"])
    for _ in range(args["num_samples"]):
        t0 = time.time()
        with autocast:
            y = model.fill(x, **sampling) if fill else model.generate(x, args["max_new_tokens"], **sampling)
        dt = time.time() - t0
        print(tok.decode(y[0].tolist()))
        n = len(pieces) - 1 if fill else args["max_new_tokens"]
        print(f"---------------- {n} tokens in {dt:.2f} s ({n / max(dt, 1e-9):.0f} tok/s)", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
