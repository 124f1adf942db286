"""
FSDP (fully sharded data parallel, PyTorch's FSDP2 `fully_shard`): the path past one GPU's memory. DDP keeps a whole
copy of the weights, gradients and optimizer state on every GPU (16 bytes per parameter with AdamW); FSDP gives each
of N processes 1/N of each and all-gathers a block's weights just before it runs, so they cost 16/N bytes per
parameter, at the price of more communication. train.py uses it with --fsdp=True under torchrun; DDP is the default.

The units are found without knowing the model: every child of every outermost nn.ModuleList (the blocks of every
model file; encoder and decoder for the encoder-decoders), then the root, which keeps what is left (embeddings, the
final norm, the head). A child sharing a parameter with anything outside it stays in the root, so tied embeddings
(one tensor used at both ends of the model) always end up in one unit.

Checkpoints stay the one plain format: the shards are gathered into full tensors on rank 0, which writes ckpt.pt as a
one-process run does (our names, optimizer state keyed by position), so sample.py, --init_from and a resume with DDP,
FSDP or one process, on any number of processes, read it unchanged. The price: rank 0 holds the whole checkpoint in
CPU memory while saving (12 bytes per parameter with AdamW: weights and moments), and every process reads it all on
resume. Beyond ~10B parameters a sharded checkpoint (torch.distributed.checkpoint) would be the next step.
"""

import os

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from common import die

# Elementwise updates work on shards; Muon's Newton-Schulz orthogonalises whole matrices, which no process holds.
FSDP_OPTIMIZERS = ("adamw", "lion", "sophia")


def check_fsdp(cfg):
    if cfg["fsdp"] and cfg["optimizer"] not in FSDP_OPTIMIZERS:
        die(f"fsdp=True supports optimizer {', '.join(map(repr, FSDP_OPTIMIZERS))}, not {cfg['optimizer']!r} "
            f"(it needs whole matrices); use one of those or DDP (leave fsdp out)")
    if cfg["fsdp"] and "RANK" not in os.environ:
        die("fsdp=True shards the model over processes: launch with torchrun, e.g. "
            "torchrun --standalone --nproc_per_node=8 train.py ... --fsdp=True")


def shard(model, device, dtype):
    """fully_shard every block, then the root, on all processes. bf16 runs keep fp32 sharded weights and gather and
    compute in bf16, reducing gradients in fp32; fp32 runs (CPU) stay fp32 throughout."""
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=dtype if dtype == torch.bfloat16 else None, reduce_dtype=torch.float32)
    marks = {name: dict(vars(p)) for name, p in model.named_parameters() if vars(p)}  # e.g. _no_weight_decay
    blocks = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and not any(name.startswith(f"{b}.") for b in blocks):
            blocks.update({f"{name}.{k}": child for k, child in module.named_children()})
    everywhere = list(model.named_parameters(remove_duplicate=False))
    for name, block in blocks.items():
        outside = {id(p) for n, p in everywhere if not n.startswith(f"{name}.")}
        if not any(id(p) in outside for p in block.parameters()):  # a tied tensor stays with the root
            fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for name, p in model.named_parameters():  # fully_shard made new Parameters: carry the marks over
        vars(p).update(marks.get(name, {}))


@torch.no_grad()
def full_state_dicts(model, optimizer, master):
    """The model's and the optimizer's state dicts as one process saves them. Under FSDP every process must call
    this (each shard is all-gathered in turn); the master gets full tensors on CPU, the others None. A tensor met
    twice (tied embeddings) is gathered once and stays one tensor, as in a one-process checkpoint."""
    if not isinstance(model, FSDPModule):
        return model.state_dict(), optimizer.state_dict()
    gathered = {}

    def full(v):
        if isinstance(v, dict):
            return {k: full(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(full(x) for x in v)
        if isinstance(v, DTensor) and id(v) not in gathered:
            t = v.full_tensor()
            gathered[id(v)] = t.to("cpu", copy=True) if master else None  # a copy: no shard padding in the file
        return gathered[id(v)] if isinstance(v, DTensor) else v
    return full(model.state_dict(keep_vars=True)), full(optimizer.state_dict())


def load_optimizer_state(optimizer, state_dict):
    """optimizer.load_state_dict for a plain (one-process) state dict; under FSDP every state tensor shaped like its
    parameter is first cut to this process's shard of it (every process holds the whole file)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if "state" in state_dict and any(isinstance(p, DTensor) for p in params):
        ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        placed = dict(zip(ids, params))

        def cut(i, v):
            p = placed.get(i)
            if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape:
                return distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            return v
        state = {i: {k: cut(i, v) for k, v in s.items()} for i, s in state_dict["state"].items()}
        state_dict = {**state_dict, "state": state}
    optimizer.load_state_dict(state_dict)
