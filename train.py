"""
Train any model in models/ on memory-mapped token bins. One process on CPU, one GPU or Apple MPS:

    python train.py config/shakespeare_char.py --n_layer=6 --device=cpu

and data-parallel on several GPUs (or CPU processes, with gloo):

    torchrun --standalone --nproc_per_node=8 train.py config/gpt2_124m.py

Settings come from the defaults below, then config files (plain Python), then --key=value. `model = 'gpt2'` picks
models/gpt2.py; keys that are fields of that file's Config go to the model, the rest are the trainer's own.
The trainer knows nothing about any model beyond the shared interface (see README.md).
"""

import dataclasses
import json
import os
import shlex
import sys
import time
from contextlib import nullcontext

import torch

from common import die
from common.checkpoints import (check_resumable, ensure_writable_dir, load_checkpoint, load_weights, restore_rng,
                                rng_states, save_checkpoint, strip_prefixes)
from common.data import get_batch, load_meta, open_bin, sample_starts, tokenizer
from common.devices import autocast_for, device_name, peak_flops, peak_memory_mb, pick_device, pick_dtype
from common.fsdp import check_fsdp, full_state_dicts, load_optimizer_state, shard
from common.guards import StopRequest, agree, stop_nonfinite, weights_finite
from common.hf import init_from_hf, is_hf
from common.optim import OPTIMIZERS, SCHEDULES, configure_optimizer, get_lr
from common.recipe import check_recipe, curriculum, label_smoothed, set_dropout
from common.settings import build_model, parse_config
from common.sophia import gauss_newton_bartlett

DEFAULTS = dict(
    model="gpt2",  # module name under models/
    dataset="shakespeare_char",  # data/<dataset>/{train,val}.bin + meta.json, made by prepare/<dataset>.py
    out_dir="out",
    resume=False,  # continue from out_dir/ckpt.pt
    init_from="",  # a ckpt.pt whose weights start a new run (fine-tuning, upcycling), or hf:<id> / a transformers dir
    # optimisation
    batch_size=12,  # sequences per micro-step per process
    gradient_accumulation_steps=1,  # micro-steps per optimizer step, summed over all processes
    max_iters=2000,
    max_seconds=0.0,  # stop after this much training time (evaluation excluded); schedules then run over it. 0 = off
    clock="wall",  # training time: 'wall', or 'process' (this process's CPU seconds: other processes' load does not
                   # shrink a budget; for single-threaded CPU studies run side by side)
    optimizer="adamw",  # 'adamw', 'lion', 'sophia' (Sophia-G), 'muon' (Muon + AdamW): common/optim.py
    learning_rate=1e-3,
    min_lr=1e-4,
    schedule="cosine",  # 'cosine', 'noam' (Vaswani et al. 2017), 'constant', 'wsd', 'cosine_restarts': get_lr
    warmup_iters=100,
    lr_decay_iters=2000,  # end of the schedule's horizon (with max_seconds: the time budget instead)
    wsd_decay_frac=0.2,  # wsd: the decay (1-sqrt, to min_lr) takes this last share of the horizon, in (0, 1]
    wsd_decay_start=0,  # wsd: > 0 decays from this iteration to lr_decay_iters instead (anneal a plateau checkpoint)
    restart_period=1 / 7,  # cosine_restarts: the first cycle's share of the horizon (SGDR's T_0)
    restart_mult=2.0,  # cosine_restarts: each cycle this much longer (T_mult): 1/7, 2/7, 4/7 end at the horizon
    weight_decay=0.1,
    beta1=0.9,  # AdamW (and Muon's AdamW part)
    beta2=0.95,
    adam_eps=1e-8,
    lion_betas=(0.9, 0.99),  # Lion's (the paper's); take learning_rate 3-10x lower, weight_decay 3-10x higher
    sophia_betas=(0.965, 0.99),  # Sophia's momentum and Hessian EMA (the authors' GPT-2 runs)
    sophia_gamma=0.05,  # Sophia: update clip(m / max(gamma * h, 1e-12), 1); rho in the authors' code
    hessian_interval=10,  # Sophia: refresh the Hessian estimate every k steps
    muon_momentum=0.95,  # Muon's Nesterov momentum; its lr and weight decay are AdamW's (RMS-matched updates)
    grad_clip=1.0,  # 0 disables
    skip_nonfinite=False,  # skip (and count) steps whose loss is NaN/inf instead of stopping
    # recipe (common/recipe.py), for every model
    label_smoothing=0.0,  # epsilon in [0, 1) on the cross-entropy (the 2017 paper's 0.1); auxiliary losses unchanged
    dropout_schedule=None,  # (start, end): every nn.Dropout's p goes linearly from start to end over the horizon
    seq_warmup_iters=0,  # sequence-length warmup: windows grow from seq_warmup_start to block_size over these iters
    seq_warmup_start=8,
    batch_warmup_iters=0,  # batch-size ramp-up: sequences per micro-step grow from batch_warmup_start to batch_size
    batch_warmup_start=1,
    # evaluation, logging, checkpoints
    eval_interval=250,
    eval_iters=20,
    eval_from=0,  # score only targets from this position on, so models that skip a prefix compare on equal terms
    log_interval=10,
    eval_only=False,
    sample_tokens=200,  # printed at the end of training; 0 disables
    wandb_log=False,
    wandb_project="nanoevo",
    wandb_run_name="",
    # system
    device="auto",  # 'auto' picks cuda > mps > cpu
    dtype="auto",  # 'auto': bfloat16 on CUDA (float16 where unsupported), float16 on MPS, float32 on CPU
    compile="auto",  # 'auto': on for CUDA, off for CPU/MPS
    fsdp=False,  # under torchrun: shard weights, gradients and optimizer state (FSDP2, common/fsdp.py); else DDP
    seed=1337,
)


def check_settings(cfg):
    for key in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval",
                "hessian_interval"):
        if cfg[key] < 1:
            die(f"{key}={cfg[key]} must be at least 1")
    for key, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("clock", ("wall", "process"))):
        if cfg[key] not in valid:
            die(f"{key}={cfg[key]!r} is not one of {', '.join(map(repr, valid))}")
    if cfg["schedule"] == "noam" and cfg["warmup_iters"] < 1:
        die("schedule='noam' needs warmup_iters >= 1 (its peak is at step warmup_iters; the paper uses 4000)")
    if cfg["schedule"] == "wsd" and not 0 < cfg["wsd_decay_frac"] <= 1:
        die(f"wsd_decay_frac={cfg['wsd_decay_frac']} must be in (0, 1]: the share of the horizon the decay takes")
    if cfg["wsd_decay_start"] and (cfg["max_seconds"] > 0 or not 0 < cfg["wsd_decay_start"] < cfg["lr_decay_iters"]):
        die(f"wsd_decay_start={cfg['wsd_decay_start']} must lie between 0 and lr_decay_iters={cfg['lr_decay_iters']}"
            f" and is for runs without max_seconds (there the decay is the last wsd_decay_frac of the budget)")
    if cfg["schedule"] == "cosine_restarts" and not (0 < cfg["restart_period"] <= 1 and cfg["restart_mult"] >= 1):
        die(f"restart_period={cfg['restart_period']} must be in (0, 1] and restart_mult={cfg['restart_mult']} >= 1")
    if cfg["compile"] not in ("auto", True, False):
        die(f"compile={cfg['compile']!r} must be True, False or 'auto'")
    check_fsdp(cfg)


@torch.no_grad()
def estimate_loss(model, splits, cfg, block_size, device, autocast):
    """Mean loss over eval_iters batches of each split; always the same batches, so evaluations compare."""
    model.eval()
    out = {}
    for split, data in splits.items():
        gen = torch.Generator().manual_seed(cfg["seed"] + 1)
        losses = torch.zeros(cfg["eval_iters"])
        for k in range(cfg["eval_iters"]):
            x, y = get_batch(data, sample_starts(data, block_size, (cfg["batch_size"],), gen), block_size, device)
            y[:, : cfg["eval_from"]] = -1
            with autocast:
                losses[k] = model(x, y)[1].item()
        out[split] = losses.mean().item()
    model.train()
    return out


def checkpoint(path, raw_model, optimizer, scaler, data_gen, device, state, saved_iter, master, **extra):
    """Every process hands in its RNG state; the master writes the checkpoint (never one with NaN weights)."""
    rngs, cuda_rngs = rng_states(device)
    weights, optimizer_state = full_state_dicts(raw_model, optimizer, master)  # FSDP: gathered to the master
    if master:
        if not weights_finite(weights[name] for name, _ in raw_model.named_parameters()):
            stop_nonfinite(f"the weights are not finite at iter {state['iter_num']} (a NaN/inf gradient?)",
                           "a lower learning_rate or grad_clip", path, saved_iter)
        save_checkpoint({"model": strip_prefixes(weights), **extra, "optimizer": optimizer_state,
                         "scaler": scaler.state_dict(), **state,
                         "rng": {"data": data_gen.get_state(), "torch": rngs, "cuda": cuda_rngs}}, path)
    return state["iter_num"]


def main(argv):
    cfg, module, model_kwargs = parse_config(argv, DEFAULTS, "train.py")
    check_settings(cfg)
    model_name = cfg["model"]
    # Processes: torchrun sets RANK/WORLD_SIZE; every process runs this same script.
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    master = rank == 0
    accum = cfg["gradient_accumulation_steps"]
    if accum % world != 0:
        die(f"gradient_accumulation_steps={accum} must be divisible by the number of processes ({world}); "
            f"use a multiple of {world}")
    accum //= world  # micro-steps per process; the global batch is the same however many processes share it
    gpu = cfg["device"] == "cuda" or cfg["device"] == "auto" and torch.cuda.is_available()
    device = pick_device(f"cuda:{os.environ['LOCAL_RANK']}" if ddp and gpu else cfg["device"])
    if ddp:
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    ptdtype = pick_dtype(cfg["dtype"], device)
    autocast = autocast_for(device, ptdtype)
    use_compile = device.type == "cuda" if cfg["compile"] == "auto" else bool(cfg["compile"])
    if master:
        ensure_writable_dir(cfg["out_dir"])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # Data (rank 0 prepares a small dataset if it is missing; the others wait for it)
    data_dir = os.path.join("data", cfg["dataset"])
    meta = load_meta(data_dir, cfg["dataset"], auto_prepare=master)
    if ddp:
        torch.distributed.barrier()
        meta = load_meta(data_dir, cfg["dataset"], auto_prepare=False)
    hf_model = None  # Hugging Face weights bring their model file and config too (common/hf.py)
    if is_hf(cfg["init_from"]):
        hf_model, model_name, module, model_kwargs = init_from_hf(cfg["init_from"], model_kwargs, meta)
    model_kwargs.setdefault("vocab_size", meta["vocab_size"])
    if model_kwargs["vocab_size"] < meta["vocab_size"]:
        die(f"vocab_size={model_kwargs['vocab_size']} is smaller than the dataset's {meta['vocab_size']}; "
            f"leave vocab_size out (it defaults to the dataset's) or raise it")
    block_size = model_kwargs.get("block_size", module.Config.block_size)
    check_recipe(cfg, block_size)
    train_data = open_bin(data_dir, "train", block_size, model_kwargs["vocab_size"])
    val_data = open_bin(data_dir, "val", block_size, model_kwargs["vocab_size"])

    # Model, optimizer and state: from scratch, from another checkpoint's weights, or resumed
    torch.manual_seed(cfg["seed"])  # the same initial weights in every process
    model = hf_model if hf_model is not None else build_model(module, model_kwargs)
    ckpt_path = os.path.join(cfg["out_dir"], "ckpt.pt")
    ckpt = load_checkpoint(ckpt_path) if cfg["resume"] else None
    if ckpt is not None:
        check_resumable(ckpt, ckpt_path, model_name, dataclasses.asdict(model.config))
    if ckpt is not None or cfg["init_from"] and hf_model is None:
        source_path = ckpt_path if ckpt is not None else cfg["init_from"]
        load_weights(model, ckpt or load_checkpoint(source_path), source_path, model_name)
    if cfg["fsdp"]:
        shard(model, device, ptdtype)  # puts the shards on the device; the optimizer, made next, holds them
    else:
        model.to(device)
    optimizer = configure_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=ptdtype == torch.float16)
    data_gen = torch.Generator().manual_seed(cfg["seed"])  # same in every process: all draw the one global batch
    # Dropout masks and router noise must differ between processes, which see different data.
    torch.manual_seed(cfg["seed"] + rank)
    # What a checkpoint carries besides weights and optimizer; saved_iter is the last checkpoint written.
    state = dict(iter_num=0, best_val_loss=float("inf"), skipped=0, train_time=0.0, wandb_id=None, tokens=None)
    saved_iter = None
    if ckpt is not None:
        trained_with = ckpt.get("config", {}).get("optimizer", "adamw")
        if trained_with != cfg["optimizer"]:
            die(f"{ckpt_path} was trained with optimizer={trained_with!r}; resume with --optimizer={trained_with}, "
                f"or start a new run from its weights with --init_from={ckpt_path}")
        try:
            load_optimizer_state(optimizer, ckpt["optimizer"])
        except ValueError as e:
            die(f"the optimizer state in {ckpt_path} does not fit this model ({e}); "
                f"start a new run from its weights with --init_from={ckpt_path}")
        scaler.load_state_dict(ckpt["scaler"])
        state.update({k: ckpt.get(k, v) for k, v in state.items()})
        saved_iter = state["iter_num"]
        data_gen.set_state(ckpt["rng"]["data"])
        restore_rng(ckpt["rng"], rank, device)
        print(f"resumed from {ckpt_path} at iter {saved_iter}")
    ckpt = None  # free memory
    raw_model = model
    if use_compile:
        model = torch.compile(model)  # compile before the DDP wrap
    if ddp and not cfg["fsdp"]:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model_stats = lambda: {k: float(v) for k, v in getattr(raw_model, "stats", {}).items()}  # noqa: E731
    n_params = sum(p.numel() for p in raw_model.parameters())
    if master:
        print(f"models/{model_name}.py: {n_params / 1e6:.2f}M parameters, {device.type} "
              f"{str(ptdtype).replace('torch.', '')}, compile={use_compile}, {world} process(es)"
              + (" with FSDP" if cfg["fsdp"] else ""))
    if cfg["wandb_log"] and master:
        import wandb

        state["wandb_id"] = wandb.init(project=cfg["wandb_project"], name=cfg["wandb_run_name"] or None,
                                       id=state["wandb_id"], resume="allow",  # --resume continues the same run
                                       config={**cfg, **dataclasses.asdict(raw_model.config)}).id
    stop = StopRequest(verbose=master)
    tokens_per_iter = accum * world * cfg["batch_size"] * block_size  # at full batch and length (curriculum: less)
    state["tokens"] = state["iter_num"] * tokens_per_iter if state["tokens"] is None else state["tokens"]
    flops_per_token, peak = raw_model.flops_per_token(), peak_flops(device)
    # log.jsonl: one line per evaluation (loss against iterations, tokens and training time), read by the studies
    log_path = os.path.join(cfg["out_dir"], "log.jsonl")
    if master and not cfg["resume"]:
        with open(log_path, "w") as f:
            f.write(json.dumps({"model": model_name, "params": n_params, "tokens_per_iter": tokens_per_iter,
                                "flops_per_token": flops_per_token, "device": device_name(device)}) + "\n")

    save = dict(path=ckpt_path, raw_model=raw_model, optimizer=optimizer, scaler=scaler, data_gen=data_gen,
                device=device, state=state, master=master, model_name=model_name, config=cfg, meta=meta,
                model_config=dataclasses.asdict(raw_model.config))

    model.train()
    t0, n_timed, tok0, first = time.time(), 0, state["tokens"], True
    clock = time.process_time if cfg["clock"] == "process" else time.time  # what max_seconds counts
    while True:
        it, budget = state["iter_num"], cfg["max_seconds"]
        lr = get_lr(it, cfg, state["train_time"] / budget if budget > 0 else None)
        for group in optimizer.param_groups:
            group["lr"] = lr
        set_dropout(raw_model, cfg, state["train_time"] / budget if budget > 0 else it / cfg["lr_decay_iters"])
        done = it >= cfg["max_iters"] or budget > 0 and state["train_time"] >= budget

        # Evaluate, log, checkpoint
        if it % cfg["eval_interval"] == 0 or done or cfg["eval_only"]:
            losses = estimate_loss(raw_model, {"train": train_data, "val": val_data}, cfg, block_size, device,
                                   autocast)
            if master:
                state["best_val_loss"] = min(state["best_val_loss"], losses["val"])
                print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
                with open(log_path, "a") as f:
                    f.write(json.dumps({"iter": it, "tokens": state["tokens"], "time": state["train_time"],
                                        "train_loss": losses["train"], "val_loss": losses["val"],
                                        "peak_mem_mb": peak_memory_mb(device)}) + "\n")
                if cfg["wandb_log"]:
                    wandb.log({"iter": it, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr,
                               **{f"val/{k}": v for k, v in model_stats().items()}})
            if not first and not cfg["eval_only"]:
                saved_iter = checkpoint(saved_iter=saved_iter, **save)
            t0, n_timed, tok0 = time.time(), 0, state["tokens"]  # keep evaluation out of the training speed
        first = False
        if done or cfg["eval_only"]:
            break

        # One optimizer step over the global batch: every process draws the same indices and takes its share.
        t_step = clock()
        batch, length = curriculum(it, cfg, block_size)  # the full batch_size and block_size unless they ramp up
        ix = sample_starts(train_data, length, (world, accum, batch), data_gen)[rank]
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            x, y = get_batch(train_data, ix[micro], length, device)
            if micro == 0 and it % cfg["hessian_interval"] == 0 and hasattr(optimizer, "update_hessian"):
                gauss_newton_bartlett(optimizer, model, x, y, autocast)  # Sophia's h, every k steps (common/sophia.py)
            # DDP averages gradients across processes; do it once, on the last micro-step. FSDP reduce-scatters at
            # every micro-step: skipping it would keep whole fp32 gradients on every GPU, the memory it saves.
            sync = model.no_sync() if ddp and not cfg["fsdp"] and micro < accum - 1 else nullcontext()
            with sync, autocast:
                logits, loss = model(x, y)
                loss = label_smoothed(raw_model, logits, y, loss, cfg["label_smoothing"]) / accum
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if ddp:
            torch.distributed.all_reduce(loss_sum, op=torch.distributed.ReduceOp.AVG)
        if not torch.isfinite(loss_sum):
            if not cfg["skip_nonfinite"]:
                stop_nonfinite(f"loss is {loss_sum.item()} at iter {it + 1}",
                               "a lower learning_rate, or pass --skip_nonfinite to skip such steps", ckpt_path,
                               saved_iter)
            state["skipped"] += 1  # drop the batch: no optimizer step, no scaler update
            if master:
                print(f"iter {it + 1}: loss {loss_sum.item()}, step skipped ({state['skipped']} so far)", flush=True)
        else:
            if cfg["grad_clip"] > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state["iter_num"], n_timed = it + 1, n_timed + 1
        state["tokens"] += world * accum * batch * length
        stop_now, state["train_time"] = agree(stop, state["train_time"] + clock() - t_step, device)

        if state["iter_num"] % cfg["log_interval"] == 0 and master:
            lossf = loss_sum.item()  # waits for the device, so the time below is real
            dt, tok_s = (time.time() - t0) / n_timed, (state["tokens"] - tok0) / (time.time() - t0)
            t0, n_timed, tok0 = time.time(), 0, state["tokens"]
            mfu = f", mfu {100 * flops_per_token * tok_s / (peak * world):.1f}%" if peak else ""
            stats = model_stats()
            extra = "".join(f", {k} {v:.4g}" for k, v in stats.items())
            extra += f", skipped {state['skipped']}" if state["skipped"] else ""
            print(f"iter {state['iter_num']}: loss {lossf:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                  f"{tok_s:,.0f} tok/s{mfu}{extra}", flush=True)
            if cfg["wandb_log"]:
                wandb.log({"iter": state["iter_num"], "train/loss_step": lossf, "lr": lr,
                           "tok_per_s": tok_s, **{f"train/{k}": v for k, v in stats.items()}})
        if stop_now:
            checkpoint(saved_iter=saved_iter, **save)
            if master:
                launcher = f"torchrun --standalone --nproc_per_node={world}" if ddp else "python"
                again = shlex.join(["train.py", *(a for a in argv if not a.startswith("--resume")), "--resume"])
                print(f"saved {ckpt_path} at iter {state['iter_num']}; continue with: {launcher} {again}", flush=True)
            break

    if master and cfg["sample_tokens"] > 0 and not stop.requested and not cfg["eval_only"] and not cfg["fsdp"]:
        encode, decode = tokenizer(meta)
        start = encode("\n") if meta["tokenizer"] == "char" and "\n" in meta["chars"] else [0]
        raw_model.eval()
        with autocast:
            out = raw_model.generate(torch.tensor([start], device=device), cfg["sample_tokens"], temperature=0.8, top_k=200)
        print("-" * 40 + "\n" + decode(out[0].tolist()) + "\n" + "-" * 40)
    if ddp:
        # Drop DDP first: its reducer must not hold the last reference to the process group, whose gloo threads
        # it would then join while holding the GIL they may still need (a hang at exit under load).
        model = sync = None  # noqa: F841
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C before training began (from then on StopRequest handles it): nothing to save
        sys.exit(130)
