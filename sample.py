"""
Generate text from a checkpoint written by train.py:

    python sample.py --ckpt out/shakespeare_char --start "ROMEO:" --num_samples 3 --max_new_tokens 300

The model file and its config come from the checkpoint (its model_name and model_config), the tokenizer from the
dataset meta stored beside them. Decoding is incremental: each model's generate() keeps a KV cache or a state.
"""

import argparse
import os
import sys
import time
from contextlib import nullcontext

import torch

from common import build_model, die, load_checkpoint, load_model_module, pick_device, pick_dtype, strip_prefixes, tokenizer


def main(argv=None):
    p = argparse.ArgumentParser(description="Sample from a nanoevo checkpoint.")
    p.add_argument("--ckpt", required=True, help="a checkpoint file or the out_dir holding ckpt.pt")
    p.add_argument("--start", default="\n", help="the prompt, or FILE:path to read it from a file")
    p.add_argument("--num_samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=200)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.error = lambda msg: die(f"{msg}; see python sample.py --help")  # one line, not argparse's usage block
    args = p.parse_args(argv)
    # Checked here, before a checkpoint is loaded, so a typo costs nothing (generate() would raise a ValueError).
    if args.max_new_tokens < 0:
        die(f"--max_new_tokens={args.max_new_tokens} must be 0 or more")
    if args.num_samples < 1:
        die(f"--num_samples={args.num_samples} must be at least 1")
    if args.temperature < 0:
        die(f"--temperature={args.temperature} must be 0 (greedy) or more")
    if args.top_k is not None and args.top_k < 1:
        die(f"--top_k={args.top_k} must be at least 1 (1 is greedy; the vocabulary size or more keeps every token)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        die(f"--top_p={args.top_p} must be in (0, 1] (1 keeps every token)")

    device = pick_device(args.device)
    ptdtype = pick_dtype(args.dtype, device)
    autocast = nullcontext() if ptdtype == torch.float32 else torch.autocast(device.type, dtype=ptdtype)
    ckpt = load_checkpoint(args.ckpt)
    if "meta" not in ckpt:
        die(f"{args.ckpt} has no tokenizer meta; it was not written by train.py")
    module = load_model_module(ckpt["model_name"])
    model = build_model(module, ckpt["model_config"])
    try:
        model.load_state_dict(strip_prefixes(ckpt["model"]))
    except RuntimeError:
        die(f"the weights in {args.ckpt} do not fit models/{ckpt['model_name']}.py as it is now; "
            f"was the model file edited after training?")
    model.eval().to(device)
    torch.manual_seed(args.seed)

    encode, decode = tokenizer(ckpt["meta"])
    start = args.start
    if start.startswith("FILE:"):
        path = start[len("FILE:"):]
        if not os.path.isfile(path):
            die(f"--start {start}: no such file")
        with open(path, encoding="utf-8") as f:
            start = f.read()
    ids = encode(start)
    if not ids:
        die("--start is empty; give at least one character or token")
    x = torch.tensor([ids], dtype=torch.long, device=device)
    for _ in range(args.num_samples):
        t0 = time.time()
        with autocast:
            y = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p)
        dt = time.time() - t0
        print(decode(y[0].tolist()))
        print(f"---------------- {args.max_new_tokens} tokens in {dt:.2f} s ({args.max_new_tokens / dt:.0f} tok/s)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
