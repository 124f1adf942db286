"""
Exercise every CUDA path of the repo in a few minutes on one GPU, through the same entry points a user runs:
bf16 autocast + fused AdamW for every model file (train.py), flash attention (SDPA restricted to the flash
kernel), torch.compile (train.py --compile=True), DDP over NCCL (torchrun), and MFU of the 124M configs (bench.py).

    python bench/gpu_check.py                          # on CUDA: sized for under 8 minutes on one H100/H200
    python bench/gpu_check.py --dry                    # the same sequence on CPU at tiny sizes (about a minute)
    python bench/gpu_check.py --results=r.jsonl --only=flash,train_gpt2

Prints one PASS/FAIL/SKIP line per check, appends a {"kind": "gpu_check"} summary to bench/results.jsonl (or
--results; a dry run defaults to out/gpu_check/results.jsonl) and exits 1 if any check failed. Without CUDA it
runs dry by itself. Data is a small synthetic character dataset in a temporary directory: no internet needed.
"""

import datetime
import importlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from ast import literal_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # so that `python bench/gpu_check.py` can import models/

import numpy as np
import torch
import torch.nn.functional as F

# Model sizes: the only per-model knowledge here. Every file in models/ needs an entry, or the check refuses to run
# (so a new model file is never silently left out). TINY for the CPU dry run, SMALL for the GPU.
TINY = {
    "bert": "--n_layer=2 --n_head=2 --n_embd=32",
    "gpt2": "--n_layer=2 --n_head=2 --n_embd=32",
    "lab": "--n_layer=2 --n_head=2 --n_embd=32 --position=alibi --n_kv_head=1 --mod_capacity=0.5",
    "linear_attention": "--n_layer=2 --n_head=2 --n_embd=32 --chunk_size=8",
    "llama": "--n_layer=2 --n_head=2 --n_kv_head=1 --n_embd=32 --ffn_hidden=64",
    "moe": "--n_layer=2 --n_head=2 --n_kv_head=1 --n_embd=32 --ffn_hidden=64 --n_expert=4",
    "retnet": "--n_layer=2 --n_head=2 --n_embd=32",
    "mamba": "--n_layer=2 --d_model=32",
    "mamba2": "--n_layer=2 --d_model=32 --d_state=16 --head_dim=16 --chunk_size=8",
    "t5": "--n_head=2 --d_model=32 --d_kv=16 --d_ff=64 --src_len=16 --n_encoder_layer=1 --n_decoder_layer=1",
    "transformer": "--n_head=2 --d_model=32 --d_ff=64 --src_len=16 --n_encoder_layer=1 --n_decoder_layer=1",
}
SMALL = {  # 2 layers keep torch.compile short; head dim 64 or 128 so flash attention applies
    "bert": "--n_layer=2 --n_head=4 --n_embd=256",
    "gpt2": "--n_layer=2 --n_head=4 --n_embd=256",
    "lab": "--n_layer=2 --n_head=4 --n_embd=256 --position=alibi --n_kv_head=2 --mod_capacity=0.5",
    "linear_attention": "--n_layer=2 --n_head=4 --n_embd=256 --chunk_size=64",
    "llama": "--n_layer=2 --n_head=4 --n_kv_head=2 --n_embd=256 --ffn_hidden=768",
    "moe": "--n_layer=2 --n_head=4 --n_kv_head=2 --n_embd=256 --ffn_hidden=768 --n_expert=4",
    "retnet": "--n_layer=2 --n_head=2 --n_embd=256",
    "mamba": "--n_layer=2 --d_model=256",
    "mamba2": "--n_layer=2 --d_model=256 --d_state=64 --head_dim=64 --chunk_size=64",
    "t5": "--n_head=4 --d_model=256 --d_kv=64 --d_ff=1024 --src_len=128 --n_encoder_layer=2 --n_decoder_layer=2",
    "transformer": "--n_head=4 --d_model=256 --d_ff=1024 --src_len=128 --n_encoder_layer=2 --n_decoder_layer=2",
}
# train.py settings of every training check: a few dozen iterations on GPU (a few on CPU), one evaluation at each
# end, a checkpoint, and a short sample so generate() runs on the device too.
ITERS = {False: 40, True: 4}  # {dry: max_iters}
RUN_GPU = "--block_size=256 --batch_size=16 --eval_iters=5 --log_interval=10 --warmup_iters=5 --sample_tokens=64"
RUN_DRY = "--block_size=32 --batch_size=4 --eval_iters=1 --log_interval=2 --warmup_iters=1 --sample_tokens=8"
COMPILED = ("gpt2", "llama", "mamba")  # dry: gpt2 only, each compile costs ~25 s on a 2-core CPU
MFU_CONFIGS = (("config/gpt2_124m.py", "gpt2"), ("config/llama_125m.py", "llama"))
# Per-check limits in seconds, so one hang cannot eat the budget: (GPU, dry)
TIMEOUT = {"flash": (60, 30), "train": (120, 90), "compile": (300, 180), "ddp": (120, 90), "mfu": (300, 90)}


def kill_tree(pid):
    """SIGKILL pid and every process below it. Not killpg alone: torchrun starts each worker in a session of its
    own, and a worker left behind keeps our pipe open (and waits forever on the dead launcher's store)."""
    children = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    tree = [pid]
    for p in tree:  # the list grows while it is walked: breadth-first down the tree
        tree += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sh(cmd, cwd, timeout):
    """Run an entry point as a user would: (exit code, or None on timeout; stdout+stderr)."""
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        out = p.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        kill_tree(p.pid)
        return None, p.communicate()[0] + f"\n[killed after {timeout} s]"
    except KeyboardInterrupt:
        kill_tree(p.pid)
        raise
    return p.returncode, out


def failed(rc, out):
    """A run that exited non-zero or timed out; its last line (train.py's one-line error, usually) says why."""
    last = next((line for line in reversed(out.strip().splitlines()) if line.strip()), "")
    return False, (f"exit {rc}" if rc is not None else "timed out") + f": {last[:200]}", out


def write_dataset(work, n_chars):
    """data/gpucheck/{train,val}.bin + meta.json in train.py's format (as prepare/ writes them): words drawn at
    random, so there is something to learn and the loss must fall from ln(vocab)."""
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "ROMEO:", "JULIET:", "love", "thou", "art", "my", "lord", "\n", "what", "say"]
    text = " ".join(rng.choice(words, size=n_chars // 4))[:n_chars]
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    data_dir = os.path.join(work, "data", "gpucheck")
    os.makedirs(data_dir)
    n = int(0.9 * len(ids))
    ids[:n].tofile(os.path.join(data_dir, "train.bin"))
    ids[n:].tofile(os.path.join(data_dir, "val.bin"))
    with open(os.path.join(data_dir, "meta.json"), "w") as f:
        json.dump({"vocab_size": len(chars), "tokenizer": "char", "chars": "".join(chars)}, f)


def train_check(work, ctx, name, model, timeout, extra=(), launcher=(sys.executable,)):
    """One train.py run; passes on exit 0 with finite losses at the last iteration of out_dir/log.jsonl."""
    out_dir = os.path.join(work, "out", name)
    n = ITERS[ctx["dry"]]
    cmd = [*launcher, os.path.join(ROOT, "train.py"), f"--model={model}", "--dataset=gpucheck", f"--out_dir={out_dir}",
           *ctx["sizes"][model].split(), *ctx["run"].split(), f"--max_iters={n}", f"--eval_interval={n}",
           f"--lr_decay_iters={n}", f"--device={ctx['device']}", f"--dtype={ctx['dtype']}", *extra]
    rc, out = sh(cmd, work, timeout)
    if rc != 0:
        return failed(rc, out)
    evals = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))][1:]  # line 0: the run's header
    first, last = evals[0], evals[-1]
    ok = last["iter"] == n and all(math.isfinite(e[k]) for e in evals for k in ("train_loss", "val_loss"))
    return ok, f"{last['iter']} iters, val loss {first['val_loss']:.3f} -> {last['val_loss']:.3f}", out


def flash_check(ctx, timeout):
    """SDPA restricted to the flash kernel raises when flash cannot run, so passing proves it ran: a bare causal
    call, then gpt2's forward and backward (its attention path) in bf16. Float32 must be refused, or the
    restriction is not in force and the first two prove nothing."""
    if ctx["device"] != "cuda":
        return None, "skipped on CPU: flash attention is a CUDA kernel", ""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def on_alarm(*_):
        raise TimeoutError(f"timed out after {timeout} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout)
    try:
        q = torch.randn(4, 8, 1024, 64, device="cuda", dtype=torch.bfloat16)
        kwargs = {a[2:].split("=")[0]: literal_eval(a.split("=")[1]) for a in ctx["sizes"]["gpt2"].split()}
        gpt2 = importlib.import_module("models.gpt2")  # the model interface: Config and Model
        model = gpt2.Model(gpt2.Config(**kwargs, block_size=256)).cuda()
        idx = torch.randint(model.config.vocab_size, (8, 256), device="cuda")
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = model(idx, idx)
            loss.backward()
            try:
                F.scaled_dot_product_attention(q.float(), q.float(), q.float(), is_causal=True)
                return False, "flash-only SDPA accepted float32: the backend restriction does not hold", ""
            except RuntimeError:
                pass
        torch.cuda.synchronize()
        ok = math.isfinite(loss.item())
        return ok, f"flash kernel ran for causal SDPA and gpt2 fwd+bwd in bf16 (loss {loss.item():.3f})", ""
    finally:
        signal.alarm(0)


def mfu_check(work, ctx, config, model, timeout):
    """bench.py's training mode on a 124M config with random tokens; its record is appended to the results file."""
    args = ["--modes=train", f"--device={ctx['device']}", f"--results={ctx['results']}"]
    if ctx["dry"]:  # tiny: the config's model file and code path, not its size
        args += [*TINY[model].split(), "--block_size=32", "--batch_size=2", "--vocab_size=64", "--train_steps=2",
                 "--warmup_steps=1", "--dtypes=float32", "--compile=False"]
    else:  # the config's own size; vocab_size given, so bench.py does not look for the dataset
        args += ["--vocab_size=50304", "--dtypes=bfloat16", "--compile=True"]
    rc, out = sh([sys.executable, os.path.join(ROOT, "bench.py"), os.path.join(ROOT, config), *args], work, timeout)
    if rc != 0:
        return failed(rc, out)
    with open(ctx["results"]) as f:
        row = json.loads(f.readlines()[-1])["train"][0]
    ok = row["tok_s"] > 0 and row["mfu"] is not None and row["mfu"] > 0
    mfu = "no MFU (unknown peak)" if row["mfu"] is None else f"MFU {row['mfu']:.1%}"
    return ok, f"{mfu}, {row['tok_s']:,.0f} tok/s, {row['ms']:.1f} ms/step (B={row['B']}, T={row['T']})", out


def main(argv):
    opts = {"dry": False, "results": None, "only": ""}
    for a in argv:
        key, eq, val = a.lstrip("-").partition("=")
        if not a.startswith("--") or key not in opts:
            sys.exit(f"error: unknown argument {a!r}; usage: python bench/gpu_check.py [--dry] [--results=PATH] "
                     f"[--only=NAME,...]")
        opts[key] = (literal_eval(val) if val in ("True", "False") else val) if eq else True
    models = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "models")) if f.endswith(".py") and f[0] != "_")
    missing = [m for m in models if m not in TINY or m not in SMALL]
    if missing:
        sys.exit(f"error: models/{missing[0]}.py has no sizes in bench/gpu_check.py (TINY and SMALL); add them")
    dry = bool(opts["dry"])
    if not dry and not torch.cuda.is_available():
        print("CUDA is not available: this is a dry run on CPU (tiny sizes, gloo, no flash, compile for gpt2 only)")
        dry = True
    elif dry:
        print("dry run on CPU: tiny sizes, gloo, no flash, compile for gpt2 only")
    results = opts["results"] or os.path.join(ROOT, "out/gpu_check/results.jsonl" if dry else "bench/results.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
    ctx = dict(dry=dry, device="cpu" if dry else "cuda", dtype="bfloat16", results=os.path.abspath(results),
               sizes=TINY if dry else SMALL, run=RUN_DRY if dry else RUN_GPU)
    work = tempfile.mkdtemp(prefix="gpu_check_")
    write_dataset(work, 50_000 if dry else 300_000)
    limit = {k: v[dry] for k, v in TIMEOUT.items()}

    # The sequence: (name, what it runs). Every model file gets a bf16 + fused AdamW run.
    checks = [("flash", lambda: flash_check(ctx, limit["flash"]))]
    checks += [(f"train_{m}", lambda m=m: train_check(work, ctx, f"train_{m}", m, limit["train"], ["--compile=False"]))
               for m in models]
    checks += [(f"compile_{m}", lambda m=m: train_check(work, ctx, f"compile_{m}", m, limit["compile"],
                                                         ["--compile=True"])) for m in COMPILED[:1 if dry else None]]
    # torchrun sets RANK/WORLD_SIZE, so train.py takes its DDP path: NCCL on cuda, gloo on cpu. The module form is the
    # torchrun command of this interpreter's torch.
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1")
    checks += [("ddp_" + ("gloo" if dry else "nccl"),
                lambda: train_check(work, ctx, "ddp", "gpt2", limit["ddp"], ["--compile=False"], torchrun))]
    checks += [(f"mfu_{os.path.basename(c)[:-3]}", lambda c=c, m=m: mfu_check(work, ctx, c, m, limit["mfu"]))
               for c, m in MFU_CONFIGS]
    if opts["only"]:
        checks = [(n, fn) for n, fn in checks if any(o in n for o in str(opts["only"]).split(","))]

    records, t_start = [], time.time()
    try:
        for name, fn in checks:
            t0 = time.time()
            try:
                ok, detail, out = fn()
            except Exception as e:  # a check that crashes is a failed check, and the others still run
                ok, detail, out = False, f"{type(e).__name__}: {e}", ""
            dt = time.time() - t0
            status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
            print(f"{status} {name:<22} {dt:6.1f} s  {detail}", flush=True)
            if ok is False and out:  # enough of the output to see why, without rerunning
                print("".join(f"    | {line}\n" for line in out.strip().splitlines()[-15:]), end="", flush=True)
            records.append(dict(name=name, ok=ok, seconds=round(dt, 2), detail=detail))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    dev = torch.cuda.get_device_name(0) if not dry else f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    record = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), kind="gpu_check", dry=dry,
                  device_name=dev, torch=torch.__version__, checks=records)
    with open(ctx["results"], "a") as f:
        f.write(json.dumps(record) + "\n")
    n_fail, n_skip = sum(r["ok"] is False for r in records), sum(r["ok"] is None for r in records)
    print(f"{'FAILED' if n_fail else 'OK'}: {len(records) - n_fail - n_skip} passed, {n_fail} failed, {n_skip} skipped "
          f"in {time.time() - t_start:.0f} s on {record['device_name']}; appended to {ctx['results']}")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
