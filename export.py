"""
Write a checkpoint as a transformers model directory (config.json, model.safetensors, the tokenizer):

    python export.py --ckpt=out/llama_shakespeare_char --out_dir=hf/llama_shakespeare_char

which transformers reads as its own (AutoModelForCausalLM.from_pretrained("hf/llama_shakespeare_char"); BERT:
AutoModelForMaskedLM, T5: AutoModelForSeq2SeqLM) and this repo reads back (python sample.py
--ckpt=hf/llama_shakespeare_char). Any checkpoint load_model reads can be exported: a train.py out_dir or file,
hf:<model id>, a transformers directory. A model whose Config transformers cannot express (GPT-2 without biases,
a Switch-routed MoE, ...) is one line saying so.
"""

import sys

import torch

from common import die
from common.hf import export, load_model
from common.settings import parse_args

DEFAULTS = dict(
    ckpt="",  # what to export: a checkpoint file, the out_dir holding ckpt.pt, hf:<model id>, a transformers dir
    out_dir="",  # the directory to write
    dtype="float32",  # of the written weights: 'float32', 'bfloat16' or 'float16'
)


def main(argv):
    args = parse_args(argv, DEFAULTS, "export.py")
    if not args["ckpt"] or not args["out_dir"]:
        die("--ckpt and --out_dir are required, e.g. python export.py --ckpt=out/shakespeare_char --out_dir=hf/x")
    if args["dtype"] not in ("float32", "bfloat16", "float16"):
        die(f"--dtype={args['dtype']!r} must be 'float32', 'bfloat16' or 'float16'")
    model, model_name, tok = load_model(args["ckpt"], dtype=getattr(torch, args["dtype"]))
    hf_class = export(model, model_name, args["out_dir"], meta=tok.meta)
    print(f"wrote {args['out_dir']}: models/{model_name}.py as transformers' {hf_class}")


if __name__ == "__main__":
    main(sys.argv[1:])
