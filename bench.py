"""
Measure any model file: training throughput and MFU, peak memory, prefill/decode speed at several context lengths,
and how a training step scales with context length. Only the shared model interface is used, so a forked model
file works unchanged.

    python bench.py config/shakespeare_char.py                       # all modes, float32 and bf16 autocast
    python bench.py config/llama_125m.py --modes=train --compile=True --batch_size=8
    python bench.py config/shakespeare_char.py --vs_hf=True          # the same runs on transformers' twin model
    python bench.py --evolution config/evolution [--quick]           # every generation: seeds, lr sweeps, 2 protocols
    python bench.py --compare a.py b.py --max_seconds=120            # train each config once, one table and one plot
    python bench.py --ladder config/ladder [--quick]                 # the ablation ladder: seeds, two protocols
    python bench.py --length config/length [--quick]                 # train at block_size, evaluate up to 16x
    python bench.py --scaling --model=llama [--quick]                # compute-optimal N and D: iso-FLOP + L(N, D) fits

Model settings come from the config file and --key=value, as for train.py. The training settings a config file
holds are left out (with a note); given on the command line they are an error, since they would change nothing. Weights are random and tokens are random: speed does not depend on them. Each run appends one JSON line
to bench/results.jsonl with the device, torch version, config and date.
"""

import dataclasses
import datetime
import json
import os
import sys
import threading
import time

import torch
import torch.nn.functional as F

from common import die
from common.data import load_meta
from common.devices import autocast_for, device_name, peak_flops, pick_device, pick_dtype
from common.settings import build_model, parse_config
from common.evolution import evolution
from common.ladder import ladder, length
from common.scaling import scaling
from common.study import compare
from train import DEFAULTS as TRAIN_DEFAULTS

DEFAULTS = {
    "model": "gpt2",  # module name under models/
    "dataset": "shakespeare_char",  # only its vocabulary size is used (when data/<dataset>/meta.json exists)
    "batch_size": 12,  # sequences per training step
    "device": "auto",
    "seed": 1337,
    "modes": "train,infer,scaling",  # any of train (throughput, MFU, memory), infer (prefill/decode), scaling (vs T)
    "dtypes": "auto",  # comma-separated; 'auto': float32 plus the device's autocast dtype (bf16 on CPU/CUDA)
    "compile": False,  # torch.compile the training step (the decode loop stays eager)
    "train_steps": 10,  # timed steps, after warmup_steps untimed ones
    "warmup_steps": 3,
    "contexts": (128, 512, 2048),  # prompt lengths for prefill and decode
    "decode_tokens": 32,  # generated tokens per decode measurement
    "scaling_lengths": (256, 512, 1024, 2048, 4096),  # T for the training-step scaling table (batch of scaling_batch)
    "scaling_batch": 1,
    "vs_hf": False,  # also run transformers' model with identical weights (models that define to_hf())
    "results": "bench/results.jsonl",
}


# ----------------------------------------------------------------------------------------------------------------
# Measuring


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn, device, repeats=1):
    """(seconds per call, peak memory growth in bytes) of fn(). CUDA/MPS report the allocator's peak; on CPU a
    background thread samples the process's resident memory (Linux /proc), so the figure is peak RSS growth."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    elif device.type == "cpu" and os.path.exists("/proc/self/statm"):
        base, peak, done = rss_bytes(), [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    dt = (time.perf_counter() - t0) / repeats
    mem = None
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated(device) - base
    elif device.type == "mps":
        mem = torch.mps.driver_allocated_memory()
    elif device.type == "cpu" and os.path.exists("/proc/self/statm"):
        done.set()
        sampler.join()
        mem = max(peak[0], rss_bytes()) - base
    return dt, mem


_cpu_peak = {}


def device_peak(device, dtype):
    """Peak FLOP/s for MFU: the datasheet table for known GPUs; on CPU a measured large matmul (labelled so)."""
    if device.type == "cuda":
        p = peak_flops(device)
        return (p, "datasheet bf16 dense") if p else (None, "unknown GPU")
    if device.type != "cpu":
        return None, "unknown"
    if dtype not in _cpu_peak:
        n = 2048
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        dt, _ = measure(lambda: a @ b, device, repeats=5)
        _cpu_peak[dtype] = 2 * n**3 / dt
    return _cpu_peak[dtype], f"measured {str(dtype)[6:]} {2048}^3 matmul on this CPU"


# ----------------------------------------------------------------------------------------------------------------
# The benchmarks: each takes a model object with the shared interface


def train_step_fn(model, x, y, autocast, device, use_compile):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    fwd = torch.compile(model) if use_compile else model

    def step():
        with autocast:
            _, loss = fwd(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def flops_at(model, T):
    """model.flops_per_token() for sequences of length T: the formulas read config.block_size, and the model here
    may have been built longer than the T being timed (so that every benchmarked length has positions)."""
    saved, model.config.block_size = model.config.block_size, T
    try:
        return model.flops_per_token()
    finally:
        model.config.block_size = saved


def bench_train(model, device, dtype, autocast, B, T, steps, warmup, use_compile):
    x = torch.randint(model.config.vocab_size, (B, T), device=device)
    y = torch.randint(model.config.vocab_size, (B, T), device=device)
    model.train()
    step = train_step_fn(model, x, y, autocast, device, use_compile)
    for _ in range(warmup):
        step()
    dt, mem = measure(step, device, repeats=steps)
    tok_s = B * T / dt
    peak, peak_src = device_peak(device, dtype)
    mfu = flops_at(model, T) * tok_s / peak if peak else None
    return dict(B=B, T=T, ms=1000 * dt, tok_s=tok_s, mem_mb=mem / 2**20 if mem is not None else None, mfu=mfu,
                peak=peak_src)


@torch.no_grad()
def bench_infer(model, device, autocast, L, n_new):
    """Prefill: the prompt of L tokens plus the first new token. Decode: the extra time for n_new more tokens, per
    token, so each figure is the cost of one step at context ~L."""
    model.eval()
    prompt = torch.randint(model.config.vocab_size, (1, L), device=device)

    def gen(n):
        with autocast:
            model.generate(prompt, n, temperature=0)

    gen(2)  # warm-up
    t1, _ = measure(lambda: gen(1), device, repeats=2)
    tn, mem = measure(lambda: gen(n_new + 1), device)
    per_tok = max(tn - t1, 1e-9) / n_new
    return dict(context=L, prefill_tok_s=L / t1, decode_ms=1000 * per_tok, decode_tok_s=1 / per_tok,
                mem_mb=mem / 2**20 if mem is not None else None)


# ----------------------------------------------------------------------------------------------------------------
# The transformers twin (--vs_hf): the same network and weights, driven through the same interface


class HFTwin(torch.nn.Module):
    def __init__(self, model, device):
        import transformers

        cfg_cls, kwargs, model_cls, sd = model.to_hf()
        super().__init__()
        self.hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kwargs))
        # transformers may tie tensors that ours holds apart (T5 v1.1's output layer in transformers 5): untie them
        first = {}  # id of a tensor -> the first name it has
        for name, p in list(self.hf.named_parameters(remove_duplicate=False)):
            other = first.setdefault(id(p), name)
            if other != name and name in sd and other in sd and not torch.equal(sd[name], sd[other]):
                module, _, attr = name.rpartition(".")
                setattr(self.hf.get_submodule(module), attr, torch.nn.Parameter(p.detach().clone()))
        self.hf.load_state_dict(sd, strict=False)  # strict=False: tied lm_head / buffers absent from sd
        self.hf.to(device)
        self.config, self.ours = model.config, model

    def inputs(self, idx, targets):
        """The twin's keyword arguments and the targets its logits align with: input_ids=idx for a decoder-only
        model; a model whose transformers twin takes other inputs (an encoder-decoder's source and decoder inputs, a
        masked LM's masked ids) says so in its optional hf_inputs(idx, targets)."""
        if hasattr(self.ours, "hf_inputs"):
            return self.ours.hf_inputs(idx, targets)
        return dict(input_ids=idx), targets

    def forward(self, idx, targets=None):
        kwargs, targets = self.inputs(idx, targets)
        logits = self.hf(**kwargs, use_cache=False).logits
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                                            ignore_index=-1)
        return logits, loss

    def generate(self, idx, max_new_tokens, temperature=0.0, **_):
        kwargs, _ = self.inputs(idx, None)
        if "decoder_input_ids" in kwargs:  # a decoder prompt already holds its start: no start token prepended
            kwargs["decoder_start_token_id"] = kwargs["decoder_input_ids"][:, 0]
        return self.hf.generate(**kwargs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                do_sample=False, eos_token_id=None, pad_token_id=0,
                                attention_mask=torch.ones_like(kwargs["input_ids"]))

    def flops_per_token(self):
        return self.ours.flops_per_token()


# ----------------------------------------------------------------------------------------------------------------
# Tables


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(title, rows, cols):
    print(f"\n{title}")
    print(" | ".join(f"{name:>{w}}" for name, _, _, w in cols))
    for r in rows:
        print(" | ".join(f"{fmt(r.get(key), spec):>{w}}" for _, key, spec, w in cols))


TRAIN_COLS = [("impl", "impl", "", 5), ("dtype", "dtype", "", 8), ("compile", "compile", "", 7), ("B", "B", "d", 4),
              ("T", "T", "d", 5), ("ms/step", "ms", ".1f", 9), ("tok/s", "tok_s", ",.0f", 10),
              ("MFU", "mfu", ".1%", 6), ("peak MiB", "mem_mb", ",.0f", 9)]
INFER_COLS = [("impl", "impl", "", 5), ("dtype", "dtype", "", 8), ("context", "context", "d", 7),
              ("prefill tok/s", "prefill_tok_s", ",.0f", 13), ("decode ms/tok", "decode_ms", ".2f", 13),
              ("decode tok/s", "decode_tok_s", ",.0f", 12), ("peak MiB", "mem_mb", ",.0f", 9)]
SCALE_COLS = [("impl", "impl", "", 5), ("dtype", "dtype", "", 8), ("T", "T", "d", 5), ("ms/step", "ms", ".1f", 9),
              ("tok/s", "tok_s", ",.0f", 10), ("peak MiB", "mem_mb", ",.0f", 9)]


def ratios(rows, key):
    """ours / hf for each pair of rows that differ only in impl."""
    out = []
    for r in rows:
        if r["impl"] == "ours":
            twin = [h for h in rows if h["impl"] == "hf" and all(h.get(k) == r.get(k) for k in r
                                                                   if k in ("dtype", "compile", "B", "T", "context"))]
            if twin and twin[0].get(key):
                out.append((r, r[key] / twin[0][key]))
    return out


def main(argv):
    cfg, module, model_kwargs = parse_config(argv, DEFAULTS, "bench.py", foreign=dict.fromkeys(TRAIN_DEFAULTS, "train.py"))
    device = pick_device(cfg["device"])
    modes = set(cfg["modes"].split(","))
    if modes - {"train", "infer", "scaling"}:
        die(f"--modes={cfg['modes']}: choose from train, infer, scaling")
    autocast_dtype = {"cuda": str(pick_dtype("auto", device))[6:], "mps": "float16"}.get(device.type, "bfloat16")
    dtypes = ["float32", autocast_dtype] if cfg["dtypes"] == "auto" else cfg["dtypes"].split(",")
    if cfg["vs_hf"] and not hasattr(module.Model, "to_hf"):
        die(f"models/{cfg['model']}.py has no to_hf(): there is no transformers twin to compare with")
    if "vocab_size" not in model_kwargs:  # the dataset's vocabulary when it is prepared, else the Config default
        data_dir = os.path.join("data", cfg["dataset"])
        if os.path.isfile(os.path.join(data_dir, "meta.json")):
            model_kwargs["vocab_size"] = load_meta(data_dir, cfg["dataset"], auto_prepare=False)["vocab_size"]
    T = model_kwargs.get("block_size", module.Config.block_size)
    contexts, n_new, lengths = cfg["contexts"], cfg["decode_tokens"], cfg["scaling_lengths"]
    # Positions must exist for every length measured; a larger block_size changes no weight that is timed.
    longest = max([T] + [L + n_new + 1 for L in contexts if "infer" in modes] + [L for L in lengths if "scaling" in modes])
    torch.manual_seed(cfg["seed"])
    model = build_model(module, {**model_kwargs, "block_size": longest}).to(device)
    impls = [("ours", model)] + ([("hf", HFTwin(model, device))] if cfg["vs_hf"] else [])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"models/{cfg['model']}.py: {n_params / 1e6:.2f}M parameters, {flops_at(model, T) / 1e6:.1f} MFLOP/token "
          f"(training, T={T}), {device} torch {torch.__version__}")

    train_rows, infer_rows, scale_rows = [], [], []
    for dname in dtypes:
        dtype = pick_dtype(dname, device)
        autocast = autocast_for(device, dtype)
        for impl, m in impls:
            tag = dict(impl=impl, dtype=dname)
            if "train" in modes:
                r = bench_train(m, device, dtype, autocast, cfg["batch_size"], T, cfg["train_steps"],
                                cfg["warmup_steps"], cfg["compile"])
                train_rows.append({**tag, "compile": cfg["compile"], **r})
            if "infer" in modes and (impl == "ours" or hasattr(m.hf, "generate")):  # a masked LM's twin has none
                infer_rows += [{**tag, **bench_infer(m, device, autocast, L, n_new)} for L in contexts]
            if "scaling" in modes:
                for L in lengths:
                    r = bench_train(m, device, dtype, autocast, cfg["scaling_batch"], L, 3, 1, cfg["compile"])
                    scale_rows.append({**tag, **{k: r[k] for k in ("T", "ms", "tok_s", "mem_mb")}})

    if train_rows:
        print_table("Training (forward + backward + AdamW step)", train_rows, TRAIN_COLS)
        print(f"MFU peak: {train_rows[0]['peak']}")
    if infer_rows:
        print_table(f"Inference, batch 1 (prefill = prompt + first token; decode = per token over {n_new} more)",
                    infer_rows, INFER_COLS)
    if scale_rows:
        print_table(f"Training step vs context length (batch {cfg['scaling_batch']})", scale_rows, SCALE_COLS)
    if cfg["vs_hf"]:
        print("\nours / transformers (higher is better for us):")
        for r, q in ratios(train_rows, "tok_s"):
            print(f"  train {r['dtype']} T={r['T']}: {q:.2f}x tokens/s")
        for r, q in ratios(infer_rows, "decode_tok_s"):
            print(f"  decode {r['dtype']} context {r['context']}: {q:.2f}x tokens/s")
        for r, q in ratios(scale_rows, "tok_s"):
            print(f"  train {r['dtype']} T={r['T']} batch {cfg['scaling_batch']}: {q:.2f}x tokens/s")

    record = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), argv=argv, model=cfg["model"],
                  model_config=dataclasses.asdict(model.config), device=str(device), device_name=device_name(device),
                  cpu_threads=torch.get_num_threads(), torch=torch.__version__,
                  train=train_rows, infer=infer_rows, scaling=scale_rows)
    if cfg["results"]:
        os.makedirs(os.path.dirname(cfg["results"]) or ".", exist_ok=True)
        with open(cfg["results"], "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"\nappended to {cfg['results']}")
    return record


if __name__ == "__main__":
    studies = {"--evolution": evolution, "--compare": compare,  # common/evolution.py, common/study.py
               "--ladder": ladder, "--length": length, "--scaling": scaling}  # common/ladder.py, common/scaling.py
    studies[sys.argv[1]](sys.argv[2:]) if sys.argv[1:2] and sys.argv[1] in studies else main(sys.argv[1:])
