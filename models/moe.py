"""
Mixture of Experts: the Llama decoder with sparse feed-forward layers, so parameters grow without compute per token.

Papers:
- Shazeer et al. 2017, "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer"
- Lepikhin et al. 2020, "GShard" (top-2 routing, expert capacity, first choices before second choices)
- Fedus, Zoph & Shazeer 2021, "Switch Transformers" (top-1, load-balancing loss, capacity factor, jitter, float32 router)
- Du et al. 2021, "GLaM" (an MoE feed-forward in every other layer)
- Zoph et al. 2022, "ST-MoE: Designing Stable and Transferable Sparse Expert Models" (router z-loss)
- Jiang et al. 2024, "Mixtral of Experts" (8 SwiGLU experts, softmax over all, top-2, renormalised)
- Komatsuzaki et al. 2023, "Sparse Upcycling: Training Mixture-of-Experts from Dense Checkpoints"

What changed since the previous generation (Llama, models/llama.py):
- The SwiGLU FFN of every moe_every-th block becomes n_expert SwiGLU experts and a router: each token runs through
  its top_k experts, weighted by the router (FFN parameters x n_expert, FFN compute per token x top_k).
- Routers 'mixtral' (softmax, top-k, renormalised) and 'switch' (top-1 scaled by its probability); router jitter.
- Training adds Switch's load-balancing loss and ST-MoE's z-loss; capacity_factor drops overflow tokens in training
  (they ride the residual), None is dropless as Mixtral; evaluation is always dropless.
- Sparse upcycling needs nothing here: `train.py --init_from=out/llama/ckpt.pt` with a moe config loads the dense
  weights by name and every expert starts as a copy of its FFN (common/checkpoints.py).
- Left out to keep the file about experts: the sliding window.
Read MoE.experts_loop first: the experts' plain definition; MoE.experts_grouped is the fast version of it.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------------------------
# Layers: RMSNorm, RoPE and grouped-query attention with a KV cache (as models/llama.py), the FFN and the experts


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g, computed in float32 (the mean of squares under/overflows easily in bf16)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def apply_rope(x, cos, sin):
    """Rotate each (x_i, x_{i+hs/2}) pair by position * freq_i; x (B, h, T, hs): q.k then sees only distance."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)  # cast: keep bf16 under autocast


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        nh, nkv, hs = config.n_head, config.n_kv_head, config.n_embd // config.n_head
        self.n_rep, self.head_dim = nh // nkv, hs  # query heads per key/value head; head size
        self.wq, self.wk, self.wv = (nn.Linear(config.n_embd, n * hs, bias=False) for n in (nh, nkv, nkv))
        self.wo = nn.Linear(nh * hs, config.n_embd, bias=False)
        self.attn_dropout, self.resid_dropout = nn.Dropout(config.dropout), nn.Dropout(config.dropout)  # attn: SDPA's p
        self.cache_k = self.cache_v = None  # (B, n_kv_head, block_size, hs): Model.setup_cache / free_cache

    def forward(self, x, cos, sin, start_pos=None):
        B, T, _ = x.size()
        q, k, v = (w(x).view(B, T, -1, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # rotated once, cached rotated
        mask, full = None, start_pos is None  # a full forward (training) is causal: flash attention on CUDA
        if not full:  # generation: write the new keys at their positions, attend over everything cached so far
            end = start_pos + T
            self.cache_k[:B, :, start_pos:end], self.cache_v[:B, :, start_pos:end] = k, v
            k, v = self.cache_k[:B, :, :end], self.cache_v[:B, :, :end]
            # A new query sees all the cache: no mask (is_causal would align top-left); a chunk: causal from start_pos
            mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start_pos) if T > 1 else None
        if self.n_rep > 1:  # GQA: query head j reads kv head j // n_rep (the cache keeps n_kv_head heads, not copies)
            k, v = k.repeat_interleave(self.n_rep, dim=1), v.repeat_interleave(self.n_rep, dim=1)  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=full,
                                           dropout_p=self.attn_dropout.p if full and self.training else 0.0)
        return self.resid_dropout(self.wo(y.transpose(1, 2).contiguous().view(B, T, -1)))  # heads side by side


def ffn_hidden_dim(config):
    """SwiGLU hidden size of the dense FFN and of every expert: ffn_hidden, else Llama's int(8/3 n_embd) -> x256."""
    return config.ffn_hidden if config.ffn_hidden is not None else (int(8 * config.n_embd / 3) + 255) // 256 * 256


class FeedForward(nn.Module):
    """Dense SwiGLU, w2(silu(w1 x) * w3 x), for the blocks between MoE layers (moe_every > 1)."""

    def __init__(self, config):
        super().__init__()
        hidden = ffn_hidden_dim(config)
        self.w1, self.w3 = (nn.Linear(config.n_embd, hidden, bias=False) for _ in range(2))  # gate, up
        self.w2, self.dropout = nn.Linear(hidden, config.n_embd, bias=False), nn.Dropout(config.dropout)  # down

    def forward(self, x, want_stats=False):  # -> (out, no router statistics)
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x))), None


def compute_dtype(x):  # the dtype matmuls run in: autocast's when it is on for x's device, else x's own
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


GROUP_ALIGN = 8  # rows per expert group are padded to a multiple of this: 16-byte aligned groups for bf16 kernels


def grouped_matmul(x, w, offs):
    """Rows offs[g-1]:offs[g] of x (M, K) times w[g]^T, w (G, N, K) -> (M, N): one grouped-GEMM kernel
    (F.grouped_mm) in bf16 on CUDA/CPU and float32 on CPU outside torch.compile; elsewhere (fp16, MPS, float64,
    which the kernel lacks) grouped_matmul_loop, the same function."""
    on_cpu_eager = x.device.type == "cpu" and not torch.compiler.is_compiling()
    if hasattr(F, "grouped_mm") and x.device.type in ("cuda", "cpu") and (
            x.dtype == torch.bfloat16 or (on_cpu_eager and x.dtype == torch.float32)):
        return F.grouped_mm(x, w.mT, offs=offs)
    return grouped_matmul_loop(x, w, offs)


def grouped_matmul_loop(x, w, offs):
    """One matmul per expert (a host sync, and a graph break under torch.compile)."""
    bounds = [0] + offs.tolist()
    return torch.cat([x[a:b] @ w[g].T for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))])


class MoE(nn.Module):
    """n_expert SwiGLU experts and a router. Expert weights are stacked (E, out, in), one nn.Linear weight each,
    so all experts run as one grouped matmul over the tokens grouped by expert."""

    def __init__(self, config):
        super().__init__()
        E, C, H = config.n_expert, config.n_embd, ffn_hidden_dim(config)
        self.n_expert, self.top_k, self.renormalize = E, config.top_k, config.router == "mixtral"
        self.jitter, self.capacity_factor = config.router_jitter, config.capacity_factor
        self.router, self.dropout = nn.Linear(C, E, bias=False), nn.Dropout(config.dropout)
        self.w1, self.w3, self.w2 = (nn.Parameter(torch.empty(E, *s)) for s in ((H, C), (H, C), (C, H)))  # gate up down
        for w in (self.w1, self.w2, self.w3):  # std 0.02 like every Linear; Model rescales w2 like llama's w2
            nn.init.normal_(w, mean=0.0, std=0.02)

    def route(self, x):
        """x (N, C) -> logits, probabilities (N, E), chosen experts, their weights (N, k). In at least float32
        under autocast (Switch's "selective precision": softmax and top-k are sensitive)."""
        with torch.autocast(x.device.type, enabled=False):
            h = x.to(torch.promote_types(x.dtype, torch.float32))
            if self.training and self.jitter > 0:  # Switch: multiplicative noise on the router input only
                h = h * torch.empty_like(h).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            logits = F.linear(h, self.router.weight.to(h.dtype))  # (N, E)
        probs = logits.softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.renormalize:  # Mixtral: the k weights sum to 1 (= softmax over the k chosen logits)
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, experts, weights  # Switch (k=1): the output is scaled by the expert's probability

    def capacity_mask(self, experts, B, T):
        """(N, k) bool, True = the assignment fits: each expert takes ceil(capacity_factor * T * k / E) per sequence
        (Switch), in token order with all first choices before any second (GShard)."""
        E, k = self.n_expert, self.top_k
        onehot = experts.view(B, T, k, 1) == torch.arange(E, device=experts.device)  # (B, T, k, E)
        slot = onehot.transpose(1, 2).reshape(B, k * T, E).cumsum(dim=1)  # 1-based place in the expert's queue
        slot = slot.view(B, k, T, E).transpose(1, 2)  # (B, T, k, E)
        return (onehot & (slot <= math.ceil(self.capacity_factor * T * k / E))).any(dim=-1).view(B * T, k)

    def experts_forward(self, x, experts, keep):
        """x (N, C), experts, keep (N, k) -> (N, k, C), 0 where dropped. Few assignments (decoding: N*k up to about
        the padding the grouped buffer adds) take the loop, whose cost follows N*k; else (and compiled) grouped."""
        few = experts.numel() <= self.n_expert * GROUP_ALIGN and not torch.compiler.is_compiling()
        return (self.experts_loop if few else self.experts_grouped)(x, experts, keep)

    def experts_loop(self, x, experts, keep):
        """Read this one first: each expert runs its SwiGLU on the tokens routed to it, and the outputs go back to
        their (token, choice) places. The host reads which experts got tokens (a sync each)."""
        (N, C), dtype = x.shape, compute_dtype(x)
        x, y = x.to(dtype), x.new_zeros(N, self.top_k, C, dtype=dtype)  # (N, k, C)
        for e in experts[keep].unique().tolist():  # the experts that received tokens
            token, choice = torch.where((experts == e) & keep)  # its assignments, (n,) each
            h = F.silu(F.linear(x[token], self.w1[e].to(dtype))) * F.linear(x[token], self.w3[e].to(dtype))  # (n, H)
            y[token, choice] = F.linear(h, self.w2[e].to(dtype))  # (n, C)
        return y

    def experts_grouped(self, x, experts, keep):
        """experts_loop without loops: the N*k assignments go into one buffer grouped by expert (groups padded to
        GROUP_ALIGN rows) and the experts run as grouped matmuls; static shapes, no host sync."""
        (N, C), E, k, A, dtype = x.shape, self.n_expert, self.top_k, GROUP_ALIGN, compute_dtype(x)
        e, kept = experts.view(-1), keep.view(-1)  # (N*k,) expert of each assignment, and whether it runs
        onehot = (e[:, None] == torch.arange(E, device=x.device)) & kept[:, None]  # (N*k, E)
        rank = onehot.cumsum(dim=0).gather(1, e[:, None]).squeeze(1) - 1  # place within its expert's group
        padded = (onehot.sum(dim=0) + A - 1) // A * A  # (E,) assignments each expert processes, padded
        start = padded.cumsum(dim=0) - padded  # first buffer row of each expert's group
        M = (N * k + E * (A - 1) + A - 1) // A * A  # rows the buffer needs at most, a multiple of A
        row = torch.where(kept, start[e] + rank, M)  # (N*k,) buffer row of each assignment; dropped ones to row M
        # Which token each buffer row holds: padding rows read an all-zero row (index N), dropped ones are discarded.
        src = torch.full((M + 1,), N, device=x.device).scatter(0, row, torch.arange(N * k, device=x.device) // k)[:M]
        xs = torch.cat([x, x.new_zeros(1, C)]).to(dtype)[src]  # (M, C) tokens grouped by expert
        offs = padded.cumsum(dim=0).to(torch.int32)
        offs[-1] = M  # the last group also takes the trailing padding rows, so every row belongs to a group
        h = F.silu(grouped_matmul(xs, self.w1.to(dtype), offs)) * grouped_matmul(xs, self.w3.to(dtype), offs)  # (M, H)
        y = grouped_matmul(h, self.w2.to(dtype), offs)[row.clamp(max=M - 1)].view(N, k, C)  # back to (token, choice)
        return torch.where(keep[..., None], y, 0.0)

    def forward(self, x, want_stats=False):  # -> (out, router statistics or None)
        B, T, C = x.size()
        x = x.reshape(B * T, C)  # (N, C)
        logits, probs, experts, weights = self.route(x)
        dropless = not self.training or self.capacity_factor is None  # Mixtral, and every evaluation
        keep = torch.ones_like(experts, dtype=torch.bool) if dropless else self.capacity_mask(experts, B, T)
        out = (self.experts_forward(x, experts, keep) * weights[..., None]).sum(dim=1).to(x.dtype)  # weighted sum
        stats = None  # returned, not appended to a list argument: FSDP copies arguments, and appends would be lost
        if want_stats:
            # For router_losses: f_i counts the router's choices before capacity drops, as Switch and transformers do.
            chosen = (experts[..., None] == torch.arange(self.n_expert, device=x.device)).sum(dim=(0, 1))  # (E,)
            stats = dict(chosen=chosen.float(), prob_sum=probs.sum(dim=0), rows=B * T,
                         z_sum=torch.logsumexp(logits, dim=-1).pow(2).sum(), dropped=(~keep).sum())
        return self.dropout(out.view(B, T, C)), stats


class Block(nn.Module):
    def __init__(self, config, ffn):  # ffn: MoE or FeedForward
        super().__init__()
        self.attention_norm, self.attention = RMSNorm(config.n_embd, config.norm_eps), Attention(config)
        self.ffn_norm, self.feed_forward = RMSNorm(config.n_embd, config.norm_eps), ffn(config)

    def forward(self, x, cos, sin, start_pos=None):  # -> (x, router statistics or None)
        x = x + self.attention(self.attention_norm(x), cos, sin, start_pos)  # pre-norm residual
        y, stats = self.feed_forward(self.ffn_norm(x), start_pos is None)  # generation skips the bookkeeping
        return x + y, stats  # dropped tokens: only the residual passes


# ----------------------------------------------------------------------------------------------------------------
# Config and model


@dataclass
class Config:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 4  # key/value heads: n_head = multi-head, 1 = multi-query, in between = grouped-query
    n_embd: int = 768
    ffn_hidden: int = None  # each expert's (and dense FFN's) SwiGLU hidden size; None = Llama's rule (ffn_hidden_dim)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True  # as models/llama.py, so its checkpoints upcycle unchanged (Mixtral unties them)
    dropout: float = 0.0
    grad_checkpoint: bool = False  # recompute each block's activations in backward (experts too): less memory
    # Mixture of experts
    n_expert: int = 8  # experts per MoE layer
    top_k: int = 2  # experts per token: 2 = GShard / GLaM / Mixtral, 1 = Switch
    moe_every: int = 1  # an MoE in every k-th block, dense SwiGLU in the others (GLaM: 2)
    router: str = "mixtral"  # 'mixtral': softmax, top-k, renormalise; 'switch': top-1 weighted by its probability
    router_jitter: float = 0.0  # training: router input times U(1 - eps, 1 + eps) (Switch uses 0.01)
    aux_loss_coef: float = 0.01  # load-balancing loss weight (Switch's alpha; transformers' Mixtral uses 0.001)
    z_loss_coef: float = 0.001  # router z-loss weight (ST-MoE)
    capacity_factor: float = None  # None = dropless; e.g. 1.25 = Switch capacity, overflow tokens dropped (training)


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        c, hidden, hs = config, ffn_hidden_dim(config), config.n_embd // config.n_head
        for bad, msg in (
                (c.n_embd % c.n_head != 0, f"n_embd ({c.n_embd}) must be divisible by n_head ({c.n_head})"),
                (c.n_kv_head < 1 or c.n_head % c.n_kv_head != 0,
                 f"n_head ({c.n_head}) must be a multiple of n_kv_head ({c.n_kv_head})"),
                (hs % 2 != 0, f"head size n_embd/n_head ({hs}) must be even for RoPE"),
                (c.router not in ("mixtral", "switch"), f"router={c.router!r} must be 'mixtral' or 'switch'"),
                (c.router == "switch" and c.top_k != 1,
                 f"router='switch' sends each token to one expert: set top_k=1 (got {c.top_k})"),
                (not 1 <= c.top_k <= c.n_expert, f"top_k ({c.top_k}) must be between 1 and n_expert ({c.n_expert})"),
                (not 1 <= c.moe_every <= c.n_layer, f"moe_every ({c.moe_every}) must be between 1 and n_layer ({c.n_layer})"),
                (c.capacity_factor is not None and c.capacity_factor <= 0,
                 f"capacity_factor ({c.capacity_factor}) must be None (dropless) or > 0"),
                (c.n_embd % GROUP_ALIGN or hidden % GROUP_ALIGN,
                 f"n_embd ({c.n_embd}) and the expert hidden size ({hidden}) must be multiples of {GROUP_ALIGN} "
                 f"(grouped-matmul kernels need 16-byte aligned rows)")):
            if bad:
                raise ValueError(msg)
        self.config, self.stats = c, {}  # stats: router losses, dropped tokens, expert load; set by every full forward
        self.tok_embeddings, self.drop = nn.Embedding(c.vocab_size, c.n_embd), nn.Dropout(c.dropout)
        # moe_every=k makes blocks k-1, 2k-1, ... sparse (1 = every block; GLaM: every other one)
        self.moe_layers = [i for i in range(c.n_layer) if (i + 1) % c.moe_every == 0]
        self.layers = nn.ModuleList([Block(c, MoE if i in self.moe_layers else FeedForward) for i in range(c.n_layer)])
        self.norm, self.output = RMSNorm(c.n_embd, c.norm_eps), nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.tok_embeddings.weight = self.output.weight
        # RoPE tables (block_size, hs), rotate-half layout: dimension i pairs with i + hs/2 at the same frequency
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, hs, 2).float() / hs))
        angle = (torch.arange(c.block_size).float()[:, None] * inv_freq).repeat(1, 2)
        self.register_buffer("rope_cos", angle.cos(), persistent=False)
        self.register_buffer("rope_sin", angle.sin(), persistent=False)
        # Init as models/llama.py, experts included (std 0.02, residual projections wo and w2 scaled by
        # 1/sqrt(2 * n_layer)), so dense and sparse runs differ only in the architecture.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight", "feed_forward.w2")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    def forward(self, idx, targets=None, start_pos=None):
        """start_pos (generation only): position of idx[:, 0] in the KV cache. The loss adds the router losses in
        training only, so evaluation reports the cross-entropy alone, comparable with dense models."""
        T, pos0 = idx.size(1), start_pos or 0
        if pos0 + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos0 + T} is longer than block_size {self.config.block_size}")
        cos, sin = self.rope_cos[pos0:pos0 + T], self.rope_sin[pos0:pos0 + T]
        router_stats, x = [], self.drop(self.tok_embeddings(idx))  # x: (B, T, C)
        ckpt = self.config.grad_checkpoint and self.training and start_pos is None  # decoding has no backward
        for block in self.layers:
            x, stats = checkpoint(block, x, cos, sin, use_reentrant=False) if ckpt else block(x, cos, sin, start_pos)
            router_stats += [stats] if stats is not None else []
        logits = self.output(self.norm(x))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.view(-1), ignore_index=-1)
        if router_stats:
            aux_loss, z_loss = self.router_losses(router_stats)
            if loss is not None and self.training:
                loss = loss + self.config.aux_loss_coef * aux_loss + self.config.z_loss_coef * z_loss
        return logits, loss

    def router_losses(self, router_stats):
        """Switch's balancing loss E * sum_i f_i * P_i (f_i: share of router choices for expert i, summing to k with
        top-k; P_i: mean probability), f and P pooled over the MoE layers as transformers' Mixtral does, and
        ST-MoE's z-loss. Refreshes self.stats: the losses, dropped assignments, load_max (busiest expert's share
        times E: 1 = balanced) and, in eval, load_l{layer}_e{expert}."""
        E, k, rows = self.config.n_expert, self.config.top_k, sum(s["rows"] for s in router_stats)  # tokens x layers
        chosen, prob_sum, z_sum, dropped = (torch.stack([s[key] for s in router_stats])  # (L_moe, ...) each
                                            for key in ("chosen", "prob_sum", "z_sum", "dropped"))
        f, P = chosen.sum(dim=0) / rows, prob_sum.sum(dim=0) / rows
        aux_loss, z_loss, dropped = E * (f * P).sum(), z_sum.sum() / rows, dropped.sum()
        load = chosen / chosen.sum(dim=1, keepdim=True)  # (L_moe, E), 1/E each when balanced
        self.stats = {"aux_loss": aux_loss.detach(), "z_loss": z_loss.detach(), "dropped_tokens": dropped,
                      "dropped_frac": dropped / (rows * k), "load_max": load.max().detach() * E}
        if not self.training:
            self.stats.update({f"load_l{j}_e{i}": row[i] for j, row in zip(self.moe_layers, load) for i in range(E)})
        return aux_loss, z_loss

    def num_params(self, non_embedding=True, active=False):
        """non_embedding: without the token embedding unless tied (then it is the output matmul); active: only the
        top_k experts a token runs through in each MoE layer."""
        cfg = self.config
        n = sum(p.numel() for p in self.parameters())  # shared (tied) tensors are counted once
        n -= self.tok_embeddings.weight.numel() if non_embedding and not cfg.tie_embeddings else 0
        skipped = (cfg.n_expert - cfg.top_k) * 3 * cfg.n_embd * ffn_hidden_dim(cfg)  # the experts a token skips
        return n - len(self.moe_layers) * skipped if active else n

    def flops_per_token(self):
        """Training FLOPs per token, PaLM appendix B with active parameters: 6 * N_active + 12 * L * C * T (the
        dispatch's gathers and padding rows left out)."""
        return 6 * self.num_params(active=True) + 12 * self.config.n_layer * self.config.n_embd * self.config.block_size

    def setup_cache(self, batch_size, device, dtype):
        shape = (batch_size, self.config.n_kv_head, self.config.block_size, self.config.n_embd // self.config.n_head)
        for attn in (block.attention for block in self.layers):
            attn.cache_k, attn.cache_v = (torch.zeros(shape, device=device, dtype=dtype) for _ in range(2))

    def free_cache(self):
        for block in self.layers:
            block.attention.cache_k = block.attention.cache_v = None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens (temperature 0 = greedy): the prompt's last block_size tokens fill the
        KV cache, then one token per step (experts need no cache); a full cache is refilled from the recent half."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        self.setup_cache(idx.size(0), idx.device, compute_dtype(self.output.weight))
        size, pos, new = self.config.block_size, 0, idx[:, -self.config.block_size:]  # the whole prompt if it fits
        for _ in range(max_new_tokens):
            if pos + new.size(1) > size:  # cache full: refill from the most recent half of the context
                new, pos = idx[:, -(size // 2):], 0
            logits, _ = self(new, start_pos=pos)
            pos += new.size(1)
            new = sample_next(logits[:, -1, :], temperature, top_k, top_p)  # (B, 1)
            idx = torch.cat((idx, new), dim=1)
        self.free_cache()
        return idx

    # Hugging Face weights (transformers' MixtralForCausalLM, v5 layout): renaming only, no transformers import.
    # Mixtral fuses each layer's experts: gate_up_proj (E, 2H, C) = [w1; w3], down_proj (E, C, H) = w2.
    _fused = ("feed_forward.w1", "feed_forward.w3")  # both halves of gate_up_proj
    _hf = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight", "attention_norm.weight": "input_layernorm.weight",
           **{f"attention.w{p}.weight": f"self_attn.{p}_proj.weight" for p in "qkvo"},
           "ffn_norm.weight": "post_attention_layernorm.weight", "feed_forward.router.weight": "mlp.gate.weight",
           "feed_forward.w2": "mlp.experts.down_proj", **dict.fromkeys(_fused, "mlp.experts.gate_up_proj")}

    @classmethod
    def hf_name(cls, key):
        layer = key.split(".", 2)  # in a block: layers, i, rest
        return cls._hf[key] if key in cls._hf else f"model.layers.{layer[1]}.{cls._hf[layer[2]]}"

    @classmethod
    def from_hf_state_dict(cls, sd, config):
        """Load a MixtralForCausalLM state dict (config: router='mixtral', moe_every=1, matching sizes)."""
        model, sd = cls(config), {"lm_head.weight": sd["model.embed_tokens.weight"], **sd}  # tied: may lack lm_head
        ours = {k: sd[cls.hf_name(k)] for k in model.state_dict()}
        model.load_state_dict({k: v.chunk(2, dim=1)[k.endswith("w3")] if k.endswith(cls._fused) else v
                               for k, v in ours.items()})
        return model

    def to_hf(self):
        """(config class, config kwargs, model class, state dict) for the same network in transformers. Mixtral
        is dropless (equal to ours in eval mode) and its jitter multiplies the expert input too, so it is set to 0."""
        cfg = self.config
        if cfg.moe_every != 1 or cfg.router != "mixtral":
            raise ValueError("transformers' Mixtral has an MoE in every layer with the renormalised top-k router: "
                             "set moe_every=1 and router='mixtral' to compare against it")
        kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=ffn_hidden_dim(cfg),
                      num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
                      max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
                      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                      tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu", attention_dropout=0.0,
                      sliding_window=None, num_local_experts=cfg.n_expert, num_experts_per_tok=cfg.top_k,
                      router_aux_loss_coef=cfg.aux_loss_coef, router_jitter_noise=0.0,
                      bos_token_id=None, eos_token_id=None)
        ours = self.state_dict()
        sd = {self.hf_name(k): v for k, v in ours.items() if not k.endswith(self._fused)}
        sd.update({f"model.layers.{i}.mlp.experts.gate_up_proj": torch.cat(
            [ours[f"layers.{i}.{w}"] for w in self._fused], dim=1) for i in self.moe_layers})
        return "MixtralConfig", kwargs, "MixtralForCausalLM", sd


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def check_generate_args(idx, max_new_tokens, temperature, top_k, top_p):
    """generate's argument check, before any work: a ValueError that names the argument and what is allowed."""
    for bad, msg in ((idx.size(1) == 0, "idx is an empty prompt: generate needs at least one token"),
                     (max_new_tokens < 0, f"max_new_tokens ({max_new_tokens}) must be >= 0"),
                     (temperature < 0, f"temperature ({temperature}) must be >= 0 (0 = greedy)"),
                     (top_k is not None and top_k < 1, f"top_k ({top_k}) must be None or an int >= 1"),
                     (top_p is not None and not 0 < top_p <= 1, f"top_p ({top_p}) must be None or in (0, 1]")):
        if bad:
            raise ValueError(msg)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """Pick the next token from the last position's logits (B, V): greedy at temperature 0, else sample after
    optional top-k and nucleus (top-p) truncation."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        logits[logits < torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]] = -float("inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits[drop] = -float("inf")
        logits = torch.full_like(logits, -float("inf")).scatter(-1, sorted_idx, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
