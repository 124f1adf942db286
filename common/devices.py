"""
Devices and precision: which device, which dtype and its autocast context, and the figures MFU and memory need.
"""

import os
from contextlib import nullcontext

import torch

from common import die


def autocast_for(device, dtype):
    """The autocast context for a compute dtype: none for float32 (the weights' own dtype)."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


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
