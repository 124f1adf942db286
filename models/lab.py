"""
The lab: one decoder-only Transformer in which each architectural idea of 2017-2024 is one Config field.

Papers (the code of each option cites its own):
- Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2: every default)
- Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (norm='rmsnorm')
- Shazeer 2020, "GLU Variants Improve Transformer" (activation='swiglu'); So et al. 2021, "Primer" ('relu2')
- Vaswani et al. 2017 (position='sinusoidal'); Su et al. 2021, "RoFormer" ('rope'); Press et al. 2022, "Train
  Short, Test Long" ('alibi'); Raffel et al. 2020, T5 ('t5'); Kazemnejad et al. 2023, NoPE ('none')
- Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need"; Ainslie et al. 2023, "GQA" (n_kv_head)
- Henry et al. 2020, "Query-Key Normalization"; Dehghani et al. 2023, "Scaling ViTs to 22B Parameters" (qk_norm)
- Wang & Komatsuzaki 2021, GPT-J; Chowdhery et al. 2022, PaLM (parallel); Dehghani et al. 2019, "Universal
  Transformers" and Lan et al. 2020, ALBERT (share_layers); Raposo et al. 2024, "Mixture-of-Depths" (mod_capacity)

What this file is for: every generation from GPT-2 to LLaMA is a point in one design space, and here each idea is a
field. The defaults are GPT-2 (tests/test_lab.py: the logits of models/gpt2.py; rmsnorm, no bias, swiglu, rope,
untied and n_kv_head give models/llama.py's), and an ablation moves one field at a time. Each option is a small module
or function picked once in __init__, so the forward pass reads the same whatever the settings.
"""

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------------------------
# Layers: positions (each scheme overrides the one hook it uses, the others are no-ops: attention never asks which),
# norms, attention, feed-forward, blocks. A block returns its residual update f(x), which the model adds (MoD: scaled).


class Position(nn.Module):
    """position='none' (NoPE, Kazemnejad et al. 2023): the causal mask alone tells a token how many came before."""

    def __init__(self, config):
        super().__init__()
        self.cfg = config

    def embed(self, x, pos):  # token embeddings (B, T, C) at positions pos (T,) -> input of the first block
        return x

    def rotary(self, pos):  # -> (cos, sin) (T, hs) that rotate q and k, or None
        return None

    score = None  # ALiBi, T5: query - key distance (..., T, S) -> additive score on q.k (..., H, T, S)

    def bias(self, q_pos, k_pos):  # (..., T), (..., S) -> the score with the causal mask folded in as -inf, or None
        return None if self.score is None else self.score(q_pos[..., :, None] - k_pos[..., None, :]).masked_fill(
            (k_pos[..., None, :] > q_pos[..., :, None]).unsqueeze(-3), float("-inf"))  # -inf: a key after its query


class Learned(Position):
    """GPT-2: a learned vector per position, added once. The table ends at block_size, and so does the model."""

    def __init__(self, config):
        super().__init__(config)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)

    def embed(self, x, pos):
        return x + self.wpe(pos)


class Sinusoidal(Position):
    """Vaswani et al. 2017 (3.4, 3.5): embedding * sqrt(C) + PE, PE(p, 2i) = sin(p / 10000^(2i/C)), PE(p, 2i+1) =
    cos(...), for the positions at hand (no end). Scaled as the paper: else a std-0.02 embedding is ~3% of the input."""

    def embed(self, x, pos):
        C = x.size(-1)
        angle = pos.float()[:, None] * 10000.0 ** (-torch.arange(0, C, 2, device=pos.device).float() / C)
        pe = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)  # (T, C), sin and cos interleaved
        return x * math.sqrt(C) + pe.to(x.dtype)


class Rotary(Position):
    """Su et al. 2021: q and k rotated in every layer, pair i at theta^(-2i/hs) in the rotate-half layout (i paired
    with i + hs/2); the tables are computed for the positions at hand, so any length."""

    def rotary(self, pos):
        hs = self.cfg.n_embd // self.cfg.n_head
        inv_freq = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, hs, 2, device=pos.device).float() / hs))
        emb = (pos.float()[:, None] * inv_freq[None, :]).repeat(1, 2)  # (T, hs): frequencies i and i + hs/2 the same
        return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x (B, h, T, hs) rotated by its positions: q.k then depends on the difference of positions only."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)  # cast: keep bf16 under autocast


def alibi_slopes(n_head):
    """Press et al. 2022: 2^(-8/n), 2^(-16/n), ..., 2^(-8) for n heads; n not a power of two: those of the closest
    lower power of two m, then the first n - m that 2m heads add in between (2^(-8(2i+1)/2m)), as the paper's code."""
    m = 2 ** math.floor(math.log2(n_head))
    return [2 ** (-8 * (i + 1) / m) for i in range(m)] + [2 ** (-8 * (2 * i + 1) / (2 * m)) for i in range(n_head - m)]


class ALiBi(Position):
    """Press et al. 2022: score q.k - slope_h * (i - j), fixed, at any distance (the paper's point: extrapolation)."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(config.n_head)), persistent=False)  # (H,)

    def score(self, distance):
        return -self.slopes[:, None, None] * distance.unsqueeze(-3)


def t5_bucket(distance, num_buckets, max_distance):
    """Raffel et al. 2020, unidirectional: distance = query - key >= 0. Half the buckets are the exact distances
    0 .. num_buckets/2 - 1, the other half grow logarithmically up to max_distance; farther shares the last."""
    exact = num_buckets // 2
    distance = distance.clamp(min=0)  # future keys (masked anyway) go to bucket 0, as in T5
    log_ratio = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return torch.where(distance < exact, distance, far)


class T5Bias(Position):
    """Raffel et al. 2020: a learned scalar per (distance bucket, head); one table, as T5 computes it in layer 1."""

    def __init__(self, config):
        super().__init__(config)
        self.table = nn.Embedding(config.num_buckets, config.n_head)

    def score(self, distance):
        return self.table(t5_bucket(distance, self.cfg.num_buckets, self.cfg.max_distance)).movedim(-1, -3)


POSITIONS = dict(learned=Learned, sinusoidal=Sinusoidal, rope=Rotary, alibi=ALiBi, t5=T5Bias, none=Position)


class RMSNorm(nn.Module):
    """Zhang & Sennrich 2019: x / sqrt(mean(x^2) + eps) * g, no re-centring; in float32 (bf16 mean squares overflow)."""

    def __init__(self, dim, config):
        super().__init__()
        self.eps, self.weight = config.norm_eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


NORMS = {"layernorm": lambda dim, c: nn.LayerNorm(dim, eps=c.norm_eps, bias=c.bias), "rmsnorm": RMSNorm}  # GPT-2, LLaMA


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        nh, nkv, hs = config.n_head, config.n_kv_head or config.n_head, config.n_embd // config.n_head
        self.n_rep, self.head_dim = nh // nkv, hs  # query heads per key/value head; head size
        self.sizes = (nh * hs, nkv * hs, nkv * hs)  # rows of q | k | v in one matmul, as GPT-2's c_attn packs them
        self.wqkv = nn.Linear(config.n_embd, sum(self.sizes), bias=config.bias)
        self.wo = nn.Linear(nh * hs, config.n_embd, bias=config.bias)
        # QK-norm (Henry 2020, Dehghani 2023): per-head q, k norms keep q.k from growing into one-hot attention.
        qk_norm = (lambda: NORMS[config.norm](hs, config)) if config.qk_norm else nn.Identity
        self.q_norm, self.k_norm = qk_norm(), qk_norm()
        self.attn_dropout, self.resid_dropout = nn.Dropout(config.dropout), nn.Dropout(config.dropout)  # attn: SDPA's p

    def forward(self, x, rope, mask, cache=None, start_pos=None):
        """mask: None (causal; a cached query sees all the cache), bool (True = may attend) or a float bias with the
        causal -inf folded in. cache: this layer's (k, v)."""
        B, T, _ = x.size()
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in self.wqkv(x).split(self.sizes, -1))
        q, k = self.q_norm(q), self.k_norm(k)  # before RoPE: the norm sees the projections, not the angles
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # cached rotated
        if cache is not None:  # position p in slot p
            cache[0][:B, :, start_pos:start_pos + T], cache[1][:B, :, start_pos:start_pos + T] = k, v
            k, v = cache[0][:B, :, :start_pos + T], cache[1][:B, :, :start_pos + T]
        if self.n_rep > 1:  # GQA: query head j reads kv head j // n_rep; the cache keeps n_kv_head heads
            k, v = k.repeat_interleave(self.n_rep, dim=1), v.repeat_interleave(self.n_rep, dim=1)
        mask = mask.to(q.dtype) if mask is not None and mask.is_floating_point() else mask  # a bias: compute dtype
        # Plain causal attention (no bias, no cache) keeps is_causal=True: the flash kernel on CUDA.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and cache is None,
                                           dropout_p=self.attn_dropout.p if self.training else 0.0)
        return self.resid_dropout(self.wo(y.transpose(1, 2).contiguous().view(B, T, -1)))  # heads side by side


def ffn_hidden_dim(config):
    """ffn_hidden if set; else 4 * n_embd, or for SwiGLU int(2/3 * 4 * n_embd) rounded up to a multiple of 8: three
    matrices that wide hold as many parameters as two of 4 * n_embd (Shazeer 2020's equal-parameter comparison)."""
    default = (8 * config.n_embd // 3 + 7) // 8 * 8 if config.activation == "swiglu" else 4 * config.n_embd
    return default if config.ffn_hidden is None else config.ffn_hidden


ACTIVATIONS = {"gelu": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
               "relu2": lambda x: F.relu(x).square()}  # So et al. 2021 (Primer): squared ReLU, found by search


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, ffn_hidden_dim(config), bias=config.bias)
        self.c_proj = nn.Linear(ffn_hidden_dim(config), config.n_embd, bias=config.bias)
        self.act, self.dropout = ACTIVATIONS[config.activation], nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class SwiGLU(nn.Module):
    """Shazeer 2020: w2(silu(w1 x) * w3 x). The gate w1 x decides, per hidden unit, how much of w3 x passes."""

    def __init__(self, config):
        super().__init__()
        hidden = ffn_hidden_dim(config)
        self.w1, self.w3 = (nn.Linear(config.n_embd, hidden, bias=config.bias) for _ in range(2))  # gate, up
        self.w2, self.dropout = nn.Linear(hidden, config.n_embd, bias=config.bias), nn.Dropout(config.dropout)  # down

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    """Pre-norm, sequential (GPT-2, LLaMA): f(x) = a + mlp(norm(x + a)), a = attn(norm(x))."""

    def __init__(self, config):
        super().__init__()
        self.attn_norm, self.attn = NORMS[config.norm](config.n_embd, config), Attention(config)
        self.mlp_norm = None if config.parallel else NORMS[config.norm](config.n_embd, config)
        self.mlp = SwiGLU(config) if config.activation == "swiglu" else MLP(config)

    def forward(self, x, rope, mask, cache=None, start_pos=None):
        a = self.attn(self.attn_norm(x), rope, mask, cache, start_pos)
        return a + self.mlp(self.mlp_norm(x + a))


class ParallelBlock(Block):
    """GPT-J, PaLM: f(x) = attn(norm(x)) + mlp(norm(x)), one shared norm; the input matmuls fuse (PaLM: ~15% faster)."""

    def forward(self, x, rope, mask, cache=None, start_pos=None):
        h = self.attn_norm(x)
        return self.attn(h, rope, mask, cache, start_pos) + self.mlp(h)


# ----------------------------------------------------------------------------------------------------------------
# Config and model


@dataclass
class Config:
    block_size: int = 1024  # the training context and the generation cache; learned positions end here too
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = None  # None = n_head (multi-head); 1 = multi-query; a divisor in between = grouped-query
    n_embd: int = 768
    norm: str = "layernorm"  # 'layernorm' (GPT-2) | 'rmsnorm' (LLaMA)
    norm_eps: float = 1e-5
    bias: bool = True  # biases in Linear and LayerNorm (GPT-2); LLaMA has none
    activation: str = "gelu"  # 'gelu' (GPT-2) | 'swiglu' (LLaMA) | 'relu2' (Primer)
    ffn_hidden: int = None  # None = 4 * n_embd, or for swiglu ~8/3 * n_embd (same parameters; see ffn_hidden_dim)
    position: str = "learned"  # 'learned' (GPT-2) | 'sinusoidal' | 'rope' (LLaMA) | 'alibi' | 't5' | 'none'
    rope_theta: float = 10000.0  # RoPE base: larger = slower rotations = longer reach
    num_buckets: int = 32  # T5 relative-position buckets (position='t5')
    max_distance: int = 128  # T5: distances from here on share the last bucket
    qk_norm: bool = False  # normalise q and k per head before q.k
    parallel: bool = False  # attention and MLP side by side from one norm (GPT-J, PaLM)
    share_layers: bool = False  # one block's weights used n_layer times (Universal Transformer, ALBERT)
    mod_capacity: float = None  # Mixture-of-Depths: fraction of tokens every other block processes (e.g. 0.125)
    tie_embeddings: bool = True  # GPT-2 ties the output layer to the token embedding; LLaMA unties them
    dropout: float = 0.0
    grad_checkpoint: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute


def check_config(c):  # bad values as ValueErrors that say what to set (the scripts show them as one line)
    for field, names in (("norm", NORMS), ("activation", [*ACTIVATIONS, "swiglu"]), ("position", POSITIONS)):
        if getattr(c, field) not in names:
            raise ValueError(f"unknown {field} {getattr(c, field)!r}: set {field} to one of {', '.join(names)}")
    hs, kv = c.n_embd // c.n_head, c.n_kv_head or c.n_head
    for bad, msg in (
            (c.n_embd % c.n_head, f"n_embd ({c.n_embd}) must be divisible by n_head ({c.n_head})"),
            (kv < 1 or c.n_head % kv, f"n_head ({c.n_head}) must be a multiple of n_kv_head ({kv}): set n_kv_head "
                                      f"to a divisor of n_head, or None for multi-head attention"),
            (c.mod_capacity is not None and not 0 < c.mod_capacity <= 1,
             f"mod_capacity ({c.mod_capacity}) must be in (0, 1], or None for no Mixture-of-Depths"),
            (c.position == "rope" and hs % 2, f"position='rope' needs an even head size (n_embd/n_head = {hs})"),
            (c.position == "sinusoidal" and c.n_embd % 2, "position='sinusoidal' needs an even n_embd"),
            (c.position == "t5" and not 2 <= c.num_buckets < 2 * c.max_distance,
             f"position='t5' needs 2 <= num_buckets ({c.num_buckets}) < 2 * max_distance ({c.max_distance})")):
        if bad:
            raise ValueError(msg)


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        check_config(config)
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.position = POSITIONS[config.position](config)
        self.drop = nn.Dropout(config.dropout)
        block = ParallelBlock if config.parallel else Block
        # share_layers (Universal Transformer, ALBERT): one block used n_layer times (each use has its own cache).
        self.blocks = nn.ModuleList([block(config) for _ in range(1 if config.share_layers else config.n_layer)])
        # Mixture-of-Depths routes every other block (the paper's best), the 2nd, 4th, ...: one logit per token each.
        routed = range(1, config.n_layer, 2) if config.mod_capacity is not None else ()
        self.routers = nn.ModuleDict({str(i): nn.Linear(config.n_embd, 1) for i in routed})
        self.norm_f = NORMS[config.norm](config.n_embd, config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:  # Press & Wolf 2017
            self.wte.weight = self.lm_head.weight
        self.stats = {}  # Mixture-of-Depths: router loss and fraction processed, refreshed by every full forward
        self.cache_k = self.cache_v = self.cache_keep = None  # set by setup_cache
        # GPT-2's init (std 0.02, residual projections by 1/sqrt(2 * n_layer)), as in gpt2.py and llama.py.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "c_proj.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        for router in self.routers.values():  # the decoding rule (logit > 0) starts at the capacity's rate
            nn.init.constant_(router.bias, math.log(config.mod_capacity / (1 - config.mod_capacity + 1e-9)))

    def forward(self, idx, targets=None, start_pos=None):
        """start_pos (generation only): position of idx[:, 0]; the new keys/values go into the KV cache. Only learned
        positions end at block_size: the other schemes evaluate any length (the cache holds block_size)."""
        T, pos0 = idx.size(1), start_pos or 0
        end = pos0 + T
        if end > self.config.block_size and self.config.position == "learned":
            raise ValueError(f"sequence of length {end} is longer than block_size {self.config.block_size}: learned "
                             f"positions end at block_size (rope, alibi, t5, sinusoidal and none go further)")
        if start_pos is not None and end > self.cache_k.size(3):
            raise ValueError(f"positions up to {end} do not fit the KV cache of block_size {self.config.block_size}")
        pos = torch.arange(pos0, end, device=idx.device)  # (T,) positions of the queries
        k_pos = pos if start_pos is None else torch.arange(end, device=idx.device)  # (S,) of the keys
        x = self.drop(self.position.embed(self.wte(idx), pos))  # (B, T, C)
        rope, bias = self.position.rotary(pos), self.position.bias(pos, k_pos)  # once, for all layers
        chunk = bias is None and start_pos is not None and T > 1  # a chunk into the cache: causal, shifted by pos0
        mask = k_pos[None, :] <= pos[:, None] if chunk else bias  # (T, S) bool, a bias, or None (plain causal)
        mod = []  # (router loss, fraction processed) of each routed layer
        ckpt = self.config.grad_checkpoint and self.training and start_pos is None  # decoding has no backward
        for i in range(self.config.n_layer):
            block = self.blocks[i % len(self.blocks)]
            block = partial(checkpoint, block, use_reentrant=False) if ckpt else block  # routed blocks too
            cache = None if start_pos is None else (self.cache_k[i], self.cache_v[i])
            if str(i) in self.routers:
                x = self.route(i, block, x, pos, k_pos, rope, bias, cache, start_pos, mod)
            else:
                x = x + block(x, rope, mask, cache, start_pos)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.view(-1), ignore_index=-1)
        if mod:
            bce = torch.stack([b for b, _ in mod]).mean()
            self.stats = dict(mod_bce=bce.detach(), mod_processed=torch.stack([f for _, f in mod]).mean())
            if loss is not None and self.training:  # the router is trained; eval reports the plain cross-entropy
                loss = loss + bce
        return logits, loss

    def route(self, i, block, x, pos, k_pos, rope, bias, cache, start_pos, mod):
        """Mixture-of-Depths (Raposo et al. 2024): x + sigmoid(z) * f(x) for the tokens a routed block processes, x for
        the rest. Training: each sequence's top-k router logits z, in order, at their own positions; the paper's BCE
        (3.5) teaches z > 0 to predict top-k, the rule of evaluation and decoding: no later token needed, so a full
        forward equals cached decoding. Dense: skipped tokens are masked out as keys, their updates dropped."""
        z = self.routers[str(i)](x).squeeze(-1)  # (B, T)
        keep = keep_k = z > 0  # (B, T)
        if start_pos is None:
            top = z.topk(max(1, int(self.config.mod_capacity * z.size(1))), dim=1).indices.sort(dim=1).values  # (B, k)
            bce = F.binary_cross_entropy_with_logits(z, torch.zeros_like(z).scatter(1, top, 1.0))
            mod.append((bce, z.new_tensor(top.size(1) / z.size(1)) if self.training else keep.float().mean()))
            if self.training:
                gather = top[..., None].expand(-1, -1, x.size(-1))  # (B, k, C)
                rope_k = None if rope is None else tuple(t[top].unsqueeze(1) for t in rope)  # (B, 1, k, hs)
                delta = block(x.gather(1, gather), rope_k, self.position.bias(pos[top], pos[top]))  # (B, k, C)
                return x.scatter_add(1, gather, (torch.sigmoid(z.gather(1, top))[..., None] * delta).to(x.dtype))
        else:
            self.cache_keep[i, :x.size(0), start_pos:start_pos + x.size(1)] = keep.to(self.cache_keep.dtype)
            keep_k = self.cache_keep[i, :x.size(0), :k_pos.size(0)] > 0  # (B, S)
        # A skipped query keeps its own key, so that no row is all -inf; its output is discarded anyway.
        allowed = ((k_pos[None, :] <= pos[:, None]) & (keep_k[:, None, :] | (k_pos[None, :] == pos[:, None])))[:, None]
        mask = allowed if bias is None else torch.where(allowed, bias, float("-inf"))  # (B, 1 or H, T, S)
        delta = torch.sigmoid(z)[..., None] * block(x, rope, mask, cache, start_pos)
        return x + torch.where(keep[..., None], delta, 0.0)

    def flops_per_token(self):
        """Training FLOPs per token, PaLM appendix B: 6N + 12 * L * C * T, per layer use (a shared block counts n_layer
        times; a Mixture-of-Depths block c of its matmuls, c^2 of its attention). Positions do no matmul work."""
        cfg = self.config
        use = [cfg.mod_capacity if str(i) in self.routers else 1.0 for i in range(cfg.n_layer)]
        per_block = sum(p.numel() for p in self.blocks[0].parameters())
        rest = sum(p.numel() for m in (self.lm_head, self.norm_f, self.routers) for p in m.parameters())
        return 6 * (rest + per_block * sum(use)) + 12 * cfg.n_embd * cfg.block_size * sum(c * c for c in use)

    def setup_cache(self, batch_size, device, dtype):
        """KV caches of block_size slots per layer use, in the compute dtype (+ MoD's decisions, 1 = processed)."""
        cfg = self.config
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head or cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.cache_k, self.cache_v = (torch.zeros(shape, device=device, dtype=dtype) for _ in range(2))
        self.cache_keep = torch.zeros(shape[:2] + shape[3:4], device=device, dtype=dtype) if self.routers else None

    def free_cache(self):
        self.cache_k = self.cache_v = self.cache_keep = None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Every position scheme decodes from a KV cache of block_size (even those whose forward runs longer): a longer
        prompt is prefilled with its last block_size tokens, a full cache refilled from the last block_size // 2."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        dev = idx.device.type  # under autocast k/v come out in the autocast dtype: cache them in it
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.lm_head.weight.dtype
        self.setup_cache(idx.size(0), idx.device, dtype)
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
