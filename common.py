"""
Plumbing shared by train.py, sample.py and bench.py: settings from config files and --key=value, loading a model
file by name, data meta and tokenizers, checkpoints, device and dtype. Nothing here knows any particular model.
"""

import dataclasses
import difflib
import importlib
import json
import os
import re
import subprocess
import sys
import traceback
import warnings
from ast import literal_eval

import torch


def die(msg):
    """A user mistake: one line that says what to do, no traceback, non-zero exit."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# ----------------------------------------------------------------------------------------------------------------
# Configuration


def load_model_module(name):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", f"{name}.py")
    if not isinstance(name, str) or not os.path.isfile(path):
        have = sorted(f[:-3] for f in os.listdir(os.path.dirname(path)) if f.endswith(".py") and f != "__init__.py")
        die(f"unknown model {name!r}: there is no models/{name}.py (have: {', '.join(have)})")
    module = importlib.import_module(f"models.{name}")
    missing = [a for a in ("Config", "Model") if not hasattr(module, a)]
    missing += [f"Model.{a}" for a in ("forward", "generate", "flops_per_token")
                if "Model" not in missing and not hasattr(module.Model, a)]
    if missing or not dataclasses.is_dataclass(module.Config):
        die(f"models/{name}.py does not follow the model interface (missing {', '.join(missing) or 'a dataclass Config'}); "
            f"see 'The model interface' in README.md")
    return module


def check_type(key, value, default):
    if default is None or value is None or isinstance(default, str) and default == "auto":
        return value
    if isinstance(default, tuple):  # a list setting: --contexts=128,512 or a single --contexts=128
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        ok = all(isinstance(v, type(default[0])) for v in value)
    elif isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        die(f"{key}={value!r} has type {type(value).__name__}, expected {type(default).__name__}")
    return value


def parse_config(argv, defaults, script):
    """-> (script settings, model module, model Config kwargs). Config files first, then --key=value overrides.
    `defaults` holds the script's own keys (with a `model` entry); any other key must be a field of the model's Config."""
    settings = {}
    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                hint = "" if arg.endswith(".py") else "; settings are written --key=value"
                die(f"config file {arg} not found{hint}")
            scope = {}
            try:
                exec(compile(open(arg).read(), arg, "exec"), scope)
            except Exception as e:  # a config file is plain Python: point at the line that failed
                line = e.lineno if isinstance(e, SyntaxError) else next(
                    f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == arg)
                die(f"config file {arg}, line {line}: {type(e).__name__}: {e.msg if isinstance(e, SyntaxError) else e}")
            settings.update({k: v for k, v in scope.items() if not k.startswith("_") and not callable(v)
                             and not isinstance(v, type(os))})
        else:
            key, eq, val = arg[2:].partition("=")
            if not eq:
                val = "True"  # a bare flag such as --resume
            try:
                settings[key] = literal_eval(val)
            except (ValueError, SyntaxError):
                settings[key] = val  # a plain string such as --device=cuda
    module = load_model_module(settings.get("model", defaults["model"]))
    model_defaults = {f.name: f.default for f in dataclasses.fields(module.Config)}
    own, model = dict(defaults), {}
    for key, val in settings.items():
        if key in defaults:
            own[key] = check_type(key, val, defaults[key])
        elif key in model_defaults:
            model[key] = check_type(key, val, model_defaults[key])
        else:
            valid = list(defaults) + list(model_defaults)
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            die(f"unknown setting {key!r} for {script} with models/{settings.get('model', defaults['model'])}.py; {hint}valid keys: {', '.join(valid)}")
    return own, module, model


# ----------------------------------------------------------------------------------------------------------------
# Data


# Datasets small enough to prepare on the fly when train.py finds them missing (a 1 MB download, seconds). The
# others take minutes to hours of download: under torchrun the other processes would time out waiting for it, and
# nobody expects a training command to start a 50 GB download, so train.py names their prepare command instead.
AUTO_PREPARE = ("shakespeare_char", "shakespeare")


def load_meta(data_dir, dataset, auto_prepare=True):
    """Read data/<dataset>/meta.json, running prepare/<dataset>.py first if the data is missing and small."""
    meta_path = os.path.join(data_dir, "meta.json")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prepare", f"{dataset}.py")
    script = os.path.relpath(script) if not os.path.relpath(script).startswith("..") else script
    if not os.path.isfile(meta_path) and auto_prepare and dataset in AUTO_PREPARE and os.path.isfile(script):
        print(f"data/{dataset} is missing: running {script}")
        if subprocess.run([sys.executable, script]).returncode != 0:
            sys.exit(1)  # the prepare script has printed its one-line reason
    if not os.path.isfile(meta_path):
        missing = f"{meta_path} is missing" if os.path.isdir(data_dir) else \
            f"dataset {dataset!r} not found ({meta_path} is missing)"
        if os.path.isfile(script):
            die(f"{missing}; prepare it first (it is too large to prepare on the fly): python {script}"
                if dataset not in AUTO_PREPARE else f"{missing}; run: python {script}")
        have = sorted(f[:-3] for f in os.listdir(os.path.dirname(script)) if f.endswith(".py")
                      and f not in ("__init__.py", "common.py"))
        die(f"{missing} and there is no {script} to make it; "
            f"write {data_dir}/{{train,val}}.bin and meta.json as prepare/common.py does, "
            f"or pick one of: {', '.join(have)}")
    fix = f"rerun python {script}" if os.path.isfile(script) else "rewrite it"
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        vocab_size, tok, chars = meta["vocab_size"], meta["tokenizer"], meta.get("chars")
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # not JSON, not an object, or a key missing
        die(f"{meta_path} is unreadable ({'no ' + str(e) if isinstance(e, KeyError) else e}); {fix}")
    problem = ("vocab_size is not an int" if not isinstance(vocab_size, int) else
               f"tokenizer {tok!r} is not 'char' or 'gpt2'" if tok not in ("char", "gpt2") else
               f"it lists {len(chars or '')} chars for vocab_size {vocab_size}"
               if tok == "char" and len(chars or "") != vocab_size else None)
    if problem:
        die(f"{meta_path} is inconsistent: {problem}; {fix}")
    return meta


def tokenizer(meta):
    """(encode, decode) for a dataset's meta.json."""
    if meta["tokenizer"] == "char":
        stoi = {c: i for i, c in enumerate(meta["chars"])}

        def encode(s):
            bad = sorted(set(c for c in s if c not in stoi))
            if bad:
                die(f"prompt has characters outside the model's character vocabulary: {''.join(bad)!r}; "
                    f"use only characters that occur in the training text")
            return [stoi[c] for c in s]

        return encode, lambda ids: "".join(meta["chars"][i] for i in ids)
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(ckpt, path):
    """Write to a temporary file, flush it to disk, then rename over the old one: a crash, a kill or a full disk
    mid-write never corrupts the previous checkpoint (os.replace is atomic)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # RuntimeError: torch's writer reports a failed write this way
        if os.path.exists(tmp):
            os.remove(tmp)
        what = "the previous checkpoint is intact" if os.path.exists(path) else "no checkpoint was written"
        die(f"could not write {path} ({getattr(e, 'strerror', None) or e}); {what}; "
            f"free some space or use another --out_dir")


def load_checkpoint(path):
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        die(f"checkpoint {path} not found; train one first (python train.py CONFIG) or check --out_dir/--ckpt")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        foreign = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        if foreign:  # unpickling it would import (and possibly run) arbitrary code
            die(f"checkpoint {path} holds a pickled {foreign[1]}, which weights_only loading refuses; it was not "
                f"written by train.py: re-save just its tensors, and only if you trust where it came from")
        why = next((line for line in str(e).splitlines() if "Unsupported" in line), str(e).split(". ")[0])[:100]
        die(f"checkpoint {path} is truncated or corrupt ({why or type(e).__name__}); use an intact copy or train again")
    if not isinstance(ckpt, dict) or not {"model", "model_name", "model_config"} <= set(ckpt):
        die(f"{path} is not a nanoevo checkpoint (a dict with model, model_name, model_config, as train.py writes)")
    return ckpt


def check_resumable(ckpt, path, model_name, run_cfg):
    """--resume needs a checkpoint of the same model and config, with its training state."""
    if ckpt["model_name"] != model_name:
        die(f"{path} holds a {ckpt['model_name']!r} model, not {model_name!r}; use another --out_dir")
    diff = [f"{k}={ckpt['model_config'].get(k)!r} (checkpoint) vs {v!r}" for k, v in run_cfg.items()
            if ckpt["model_config"].get(k) != v]
    if diff:
        die(f"--resume with a different model config than {path}: {'; '.join(diff)}; "
            f"pass the checkpoint's values, or use another --out_dir for a new run")
    missing = [k for k in ("optimizer", "scaler", "iter_num", "best_val_loss", "rng") if k not in ckpt]
    if missing:
        die(f"{path} has weights but no training state ({', '.join(missing)}); "
            f"start a new run from its weights with --init_from={path}")


def load_weights(model, ckpt, path, model_name):
    try:
        model.load_state_dict(strip_prefixes(ckpt["model"]))
    except RuntimeError as e:  # name the settings that differ: e.g. a block_size beyond learned positions
        run_cfg = dataclasses.asdict(model.config)
        diff = ", ".join(f"{k}={v!r}" for k, v in ckpt["model_config"].items() if run_cfg.get(k, v) != v)
        why = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))[:160].rstrip(".")
        die(f"the weights in {path} do not fit models/{model_name}.py as configured here: {why}"
            + (f"; the checkpoint was trained with {diff}" if diff else ""))


def ensure_writable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, ".write_test"), "w").close()
        os.remove(os.path.join(path, ".write_test"))
    except OSError as e:
        die(f"out_dir {path} is not writable ({e.strerror}); choose another with --out_dir=")


def strip_prefixes(state_dict):
    """State dict keys as the bare model names them, whether it was wrapped by DDP or torch.compile."""
    return {k.replace("_orig_mod.", "").replace("module.", "", 1) if k.startswith("module.") else
            k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}


def build_model(module, model_kwargs):
    name = module.__name__.split(".")[-1]
    unknown = set(model_kwargs) - {f.name for f in dataclasses.fields(module.Config)}
    if unknown:  # e.g. a checkpoint's config from before the model file was edited
        die(f"models/{name}.py's Config has no field(s) {', '.join(sorted(unknown))}; was the model file edited?")
    try:
        return module.Model(module.Config(**model_kwargs))
    except (ValueError, AssertionError) as e:
        die(f"invalid model config for models/{name}.py: {e}")


# ----------------------------------------------------------------------------------------------------------------
# Hardware


# Peak dense bf16 tensor-core FLOP/s from the vendors' datasheets (without sparsity), for MFU. Matched against the
# device name as whole words, in this order, so that the more specific names come first: "H100 NVL" is not the SXM
# part, "L40S" and "L40" are not the "L4", "A100" is not "A10G". (V100 has no bf16: its figure is fp16.)
PEAK_FLOPS = [("B200", 2250e12), ("H200 NVL", 836e12), ("H200", 989e12), ("H100 NVL", 835e12),
              ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12),
              ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12),
              ("RTX 3090", 71e12), ("V100", 125e12), ("MI300X", 1307e12), ("MI250X", 383e12)]


def peak_flops_of(name):
    """Datasheet peak for a device name such as 'NVIDIA H100 80GB HBM3', or None when it is not in the table."""
    words = name.replace("-", " ").split()
    for key, flops in PEAK_FLOPS:
        k = key.split()
        if any(words[i:i + len(k)] == k for i in range(len(words))):
            return flops
    return None


def peak_flops(device):
    return peak_flops_of(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        die(f"--device={name} but CUDA is not available here; use --device=cpu (or mps on Apple silicon)")
    if name == "mps" and not torch.backends.mps.is_available():
        die("--device=mps but MPS is not available here; use --device=cpu")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        die(f"--device={name} is not one of auto, cpu, cuda, cuda:N, mps")
    return torch.device(name)


def pick_dtype(name, device):
    if name == "auto":
        name = {"cuda": "bfloat16" if torch.cuda.is_bf16_supported() else "float16", "mps": "float16"}.get(
            device.type, "float32")
    if name not in ("float32", "bfloat16", "float16"):
        die(f"--dtype={name} is not one of auto, float32, bfloat16, float16")
    return getattr(torch, name)


def peak_memory_mb(device):
    """Peak memory so far: the CUDA allocator's peak, else the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(device):
    """A readable name for results tables: the GPU's, or the CPU's architecture and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
