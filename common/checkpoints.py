"""
Checkpoints: one atomic writer for every file the repo writes, and the checkpoint train.py saves, loads (always with
weights_only=True), resumes from and starts new runs from.
"""

import dataclasses
import os
import pickle
import warnings
from contextlib import contextmanager

import torch

from common import die


@contextmanager
def atomic_write(path, mode="wb"):
    """Write `path` through a temporary file beside it: flushed to disk, then renamed over `path` (os.replace is
    atomic). A crash, a kill or a full disk mid-write leaves the previous file as it was, never half a file."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(ckpt, path):
    try:
        with atomic_write(path) as f:
            torch.save(ckpt, f)
    except (OSError, RuntimeError) as e:  # RuntimeError: torch's writer reports a failed write this way
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
        # weights_only refuses to rebuild an object whose unpickling could run any code: name it...
        foreign = unsafe_globals(path) if isinstance(e, pickle.UnpicklingError) else []
        if foreign:
            die(f"checkpoint {path} holds a pickled {', '.join(foreign)}, which weights_only loading refuses; it was "
                f"not written by train.py: re-save just its tensors, and only if you trust where it came from")
        # ... else it is not a checkpoint at all: not a zip archive, truncated, an unreadable record
        why = str(e).split(". ")[0].splitlines()[0][:100] if str(e) else type(e).__name__
        die(f"checkpoint {path} is truncated or corrupt ({why}); use an intact copy or train again")
    if not isinstance(ckpt, dict) or not {"model", "model_name", "model_config"} <= set(ckpt):
        die(f"{path} is not a nanoevo checkpoint (a dict with model, model_name, model_config, as train.py writes)")
    return ckpt


def unsafe_globals(path):
    """The Python objects a checkpoint's pickle names beyond tensors (what weights_only refuses); [] if unreadable."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []


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


def rng_states(device):
    """Every process's torch (and CUDA) RNG state, gathered for the checkpoint: dropout differs between processes."""
    cpu, cuda = torch.get_rng_state(), torch.cuda.get_rng_state(device).cpu() if device.type == "cuda" else None
    if not torch.distributed.is_initialized():
        return [cpu], [cuda]
    n = torch.distributed.get_world_size()
    cpus, cudas = [None] * n, [None] * n
    torch.distributed.all_gather_object(cpus, cpu)
    torch.distributed.all_gather_object(cudas, cuda)
    return cpus, cudas


def restore_rng(rng, rank, device):
    """A checkpoint from another number of processes restores what it can; the others keep their seeds."""
    cpus, cudas = (s if isinstance(s, list) else [s] for s in (rng["torch"], rng.get("cuda")))
    if rank < len(cpus):
        torch.set_rng_state(cpus[rank])
    if device.type == "cuda" and rank < len(cudas) and cudas[rank] is not None:
        torch.cuda.set_rng_state(cudas[rank], device)


def strip_prefixes(state_dict):
    """State dict keys as the bare model names them, whether it was wrapped by DDP or torch.compile."""
    return {k.replace("_orig_mod.", "").replace("module.", "", 1) if k.startswith("module.") else
            k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}


def adapt_weights(model, sd, source_model, source_config):
    """The weights of another model file's checkpoint (a fork, or a dense model for a sparse one), by name, or a
    ValueError saying what differs. The settings both Configs hold must agree (dropout aside), and one only the
    checkpoint's holds must be unset. A tensor found under its name, or as name.weight (an nn.Linear), is copied;
    with one dimension less it is stacked: sparse upcycling (Komatsuzaki et al. 2023), every expert starts as a copy
    of the dense FFN. A tensor the checkpoint lacks (a router) starts small, std 0.002 (a tenth of the usual init,
    as Switch advises), so routing starts near uniform. Every tensor of the checkpoint must find a place."""
    ours = dataclasses.asdict(model.config)
    diff = [f"{k}={v!r} (checkpoint) vs {ours[k]!r}" for k, v in source_config.items()
            if k in ours and k != "dropout" and v != ours[k]]
    diff += [f"{k}={v!r} (checkpoint) vs not in this model" for k, v in source_config.items()
             if k not in ours and v is not None and not isinstance(v, bool)]
    if diff:
        raise ValueError(f"the settings differ ({', '.join(diff)}): set this config's to the checkpoint's values")
    out, used, gen = {}, set(), torch.Generator().manual_seed(0)
    for k, v in model.state_dict().items():
        name = k if k in sd else f"{k}.weight" if f"{k}.weight" in sd else None
        if name is None:
            out[k] = (torch.randn(v.shape, generator=gen) * 0.002).to(v.dtype)
            continue
        used.add(name)
        src = sd[name]
        out[k] = src.unsqueeze(0).repeat(v.size(0), *[1] * src.dim()) if src.shape == v.shape[1:] else src
    unused = [k for k in sd if k not in used]
    if unused:
        raise ValueError(f"the checkpoint holds tensors this model has no place for ({', '.join(unused[:3])}"
                         f"{', ...' if len(unused) > 3 else ''}): it is not a models/{source_model}.py that maps here")
    return out


def load_weights(model, ckpt, path, model_name):
    """Load a checkpoint's weights into `model`; a checkpoint of another model file goes through adapt_weights (a
    dense models/llama.py checkpoint upcycles into models/moe.py); a mismatch is one line naming it."""
    sd = strip_prefixes(ckpt["model"])
    source = ckpt["model_name"]
    if source != model_name:
        try:
            sd = adapt_weights(model, sd, source, ckpt["model_config"])
        except ValueError as e:
            die(f"cannot start models/{model_name}.py from {path}, a models/{source}.py checkpoint: {e}")
    own = model.state_dict()
    problems = [f"size mismatch for {k}: {tuple(sd[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
                for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    problems += [f"missing {k}" for k in own if k not in sd] + [f"unexpected {k}" for k in sd if k not in own]
    if problems:  # name the settings that differ too: e.g. a block_size beyond learned positions
        run_cfg = dataclasses.asdict(model.config)
        diff = ", ".join(f"{k}={v!r}" for k, v in ckpt["model_config"].items() if run_cfg.get(k, v) != v)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        die(f"the weights in {path} do not fit models/{model_name}.py as configured here: {problems[0]}{more}"
            + (f"; the checkpoint was trained with {diff}" if diff else "; was the model file edited after training?"))
    model.load_state_dict(sd)


def ensure_writable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, ".write_test"), "w").close()
        os.remove(os.path.join(path, ".write_test"))
    except OSError as e:
        die(f"out_dir {path} is not writable ({e.strerror}); choose another with --out_dir=")
