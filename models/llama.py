"""
LLaMA: the GPT-2 decoder with the parts that became standard by 2023, plus Mistral's sliding-window attention.

Papers:
- Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models" (and "Llama 2", same architecture + GQA)
- Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (RMSNorm)
- Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding" (RoPE)
- Shazeer 2020, "GLU Variants Improve Transformer" (SwiGLU)
- Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You Need" (multi-query attention)
- Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints"
- Jiang et al. 2023, "Mistral 7B" (sliding-window attention with a rolling KV cache)

What changed since the previous generation (GPT-2, models/gpt2.py):
- RMSNorm instead of LayerNorm: no mean subtraction, no bias, computed in float32.
- Rotary position embeddings applied to q and k in every layer instead of a learned position table added once:
  attention scores depend only on the distance between tokens.
- SwiGLU feed-forward (three matrices, hidden size ~8/3 * n_embd) instead of the 4 * n_embd GELU MLP.
- Grouped-query attention: n_kv_head key/value heads shared by n_head query heads (1 = multi-query); the KV cache
  shrinks by n_head / n_kv_head.
- No biases anywhere; input and output embeddings untied in Llama (tie_embeddings=True ties them, as small models do).
- Optional (Mistral): each token attends to the last sliding_window tokens only, so generation runs on a
  fixed-size rolling cache however long it goes (full attention is the same cache, one that never wraps).

Interface (shared by every file in models/): Config, Model(config), Model.forward(idx, targets=None) -> (logits, loss),
Model.generate(idx, max_new_tokens, temperature, top_k, top_p) with a KV cache, Model.flops_per_token().
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------------------------
# Norm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g. Re-centring (LayerNorm's mean) turned out unnecessary; re-scaling is what
    stabilises training. Computed in float32 because the mean of squares overflows/underflows easily in bf16."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.type_as(x)


# ----------------------------------------------------------------------------------------------------------------
# Position: rotary embeddings (RoFormer)


def rope_cos_sin(positions, head_dim, theta):
    """cos, sin tables (T, head_dim) for the given positions. Pair i rotates at frequency theta^(-2i/head_dim).
    The rotate-half layout (as in transformers): dimension i is paired with dimension i + head_dim/2, so the
    frequencies are repeated twice along the last dim."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """Rotate each (x_i, x_{i+hs/2}) pair by angle position * freq_i. x (B, h, T, hs), cos/sin (T, hs).
    Since q.k after rotating both by their own positions equals q.k rotated by the difference, attention
    sees only relative positions."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)  # cast: keep bf16 under autocast


# ----------------------------------------------------------------------------------------------------------------
# Attention: grouped-query, optionally sliding-window


def sliding_window_mask(T, window, device):
    """(T, T) bool, True = may attend: query i sees keys j with 0 <= i - j < window (window keys, itself included)."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= i) & (i - j < window)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.n_rep = config.n_head // config.n_kv_head  # query heads per key/value head
        self.head_dim = config.n_embd // config.n_head
        self.window = config.sliding_window
        self.wq = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.wk = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.wv = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=False)
        self.attn_dropout = nn.Dropout(config.dropout)  # SDPA's dropout_p; a module so schedules set it
        self.resid_dropout = nn.Dropout(config.dropout)
        self.cache_k = self.cache_v = None  # (B, n_kv_head, cache_len, hs), set by Model.setup_cache

    def forward(self, x, cos, sin, start_pos=None):
        B, T, C = x.size()
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # rotated once, cached rotated

        mask, causal, dropout = None, False, 0.0
        if start_pos is None:  # training / full forward
            dropout = self.attn_dropout.p if self.training else 0.0
            if self.window is not None and T > self.window:
                mask = sliding_window_mask(T, self.window, x.device)  # SDPA's memory-efficient kernel on CUDA
            else:
                causal = True  # flash attention on CUDA
        else:
            k, v, mask = self.cache_update(k, v, start_pos)
        # GQA: query head j reads kv head j // n_rep. The cache keeps n_kv_head heads; the copy is a temporary.
        if self.n_rep > 1:  # (plain multi-head attention needs no copy)
            k = k.repeat_interleave(self.n_rep, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(self.n_rep, dim=1)  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)  # heads side by side
        return self.resid_dropout(self.wo(y))

    def cache_update(self, k, v, start_pos):
        """One cache of L slots, position p in slot p % L; returns the keys/values to attend over and the mask. Full
        attention (L = block_size) never wraps (forward refuses positions past block_size, generate refills first):
        slot = position. Sliding window (L = window, Mistral's rolling cache): a new token at p overwrites the key of
        p - L, exactly the one that just left its window, so the filled slots are precisely the keys it may see, in
        an order that does not matter (softmax attention sums over a set; RoPE put the positions into the keys)."""
        B, _, T, _ = k.size()
        L, end = self.cache_k.size(2), start_pos + T
        if T > 1 and end > L:  # a prompt longer than the window: attend within it, then keep its last L keys
            if start_pos != 0:
                raise ValueError("a rolling (sliding-window) cache takes a long prompt at start_pos=0 only")
            slots = torch.arange(T - L, T, device=k.device) % L
            self.cache_k[:B, :, slots], self.cache_v[:B, :, slots] = k[:, :, -L:], v[:, :, -L:]
            return k, v, sliding_window_mask(T, self.window, k.device)
        slot = start_pos % L  # (a chunk, T > 1, does not wrap here: slot = start_pos)
        self.cache_k[:B, :, slot:slot + T], self.cache_v[:B, :, slot:slot + T] = k, v
        # One new query may see every filled slot, so no mask (`is_causal=True` would align the triangle top-left).
        # A chunk needs the causal mask shifted by start_pos; it spans at most L <= window positions.
        mask = torch.ones(T, end, dtype=torch.bool, device=k.device).tril(diagonal=start_pos) if T > 1 else None
        n = min(end, L)  # slots filled so far
        return self.cache_k[:B, :, :n], self.cache_v[:B, :, :n], mask


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward: SwiGLU


def ffn_hidden_dim(config):
    """ffn_hidden if set, else the Llama reference's rule: int(8 * n_embd / 3), 2/3 of GPT's 4 * n_embd as three
    matrices replace two (same parameter count), rounded up to a multiple of 256 (friendly matmul shapes)."""
    if config.ffn_hidden is not None:
        return config.ffn_hidden
    return (int(8 * config.n_embd / 3) + 255) // 256 * 256


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x). The gate w1 x decides, per hidden unit, how much of w3 x passes."""

    def __init__(self, config):
        super().__init__()
        hidden = ffn_hidden_dim(config)
        self.w1 = nn.Linear(config.n_embd, hidden, bias=False)  # gate
        self.w3 = nn.Linear(config.n_embd, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, config.n_embd, bias=False)  # down
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


# ----------------------------------------------------------------------------------------------------------------
# Block


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, start_pos=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, start_pos)  # pre-norm residual
        x = x + self.feed_forward(self.ffn_norm(x))
        return x


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    block_size: int = 1024  # the training context; also the cache size of non-window generation
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 4  # key/value heads: n_head = multi-head, 1 = multi-query, in between = grouped-query
    n_embd: int = 768
    ffn_hidden: int = None  # SwiGLU hidden size; None = int(8 * n_embd / 3) rounded up to a multiple of 256
    norm_eps: float = 1e-5  # Llama 2's RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base: larger = slower rotations = longer reach (Llama 3 uses 500000)
    sliding_window: int = None  # None = full causal attention; an int W = Mistral: each token sees the last W
    tie_embeddings: bool = True  # Llama unties them; at ~125M the 38.6M-parameter embedding is worth sharing
    dropout: float = 0.0  # Llama uses none; kept for small-data runs
    grad_checkpoint: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute


# ----------------------------------------------------------------------------------------------------------------
# Model


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
        if config.n_kv_head < 1 or config.n_head % config.n_kv_head != 0:
            raise ValueError(f"n_head ({config.n_head}) must be a multiple of n_kv_head ({config.n_kv_head})")
        if (config.n_embd // config.n_head) % 2 != 0:
            raise ValueError(f"head size n_embd/n_head ({config.n_embd // config.n_head}) must be even for RoPE")
        if config.sliding_window is not None and config.sliding_window < 1:
            raise ValueError(f"sliding_window ({config.sliding_window}) must be None or a positive int")
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.output = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:  # Press & Wolf 2017, as in GPT-2
            self.tok_embeddings.weight = self.output.weight

        # RoPE tables for positions 0..block_size-1, computed once and sliced by position. Not saved in checkpoints
        # (persistent=False): they are a function of the config, and HF's state dict has no such keys either.
        cos, sin = rope_cos_sin(torch.arange(config.block_size), config.n_embd // config.n_head, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs)
        self.register_buffer("rope_sin", sin, persistent=False)  # (block_size, hs)

        # Init: the Llama papers do not give one; we keep GPT-2's (std 0.02, residual projections wo and w2 scaled
        # by 1/sqrt(2 * n_layer)) so that the comparison with models/gpt2.py changes only the architecture.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def rope(self, start, T, device):
        """cos, sin (T, hs) for positions start..start+T-1. Beyond block_size (only a sliding-window model's
        generation gets there) they are computed on the fly with the same function as the buffers."""
        if start + T <= self.config.block_size:
            return self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        positions = torch.arange(start, start + T, device=device)
        return rope_cos_sin(positions, self.config.n_embd // self.config.n_head, self.config.rope_theta)

    def forward(self, idx, targets=None, start_pos=None):
        """start_pos (generation only): position of idx[:, 0]; the new keys/values go into the KV cache."""
        B, T = idx.size()
        pos0 = 0 if start_pos is None else start_pos
        # A window model's rolling cache has no end; anything else is bounded by the training context.
        if T > self.config.block_size or (self.config.sliding_window is None and pos0 + T > self.config.block_size):
            raise ValueError(f"sequence of length {pos0 + T} is longer than block_size {self.config.block_size}")
        cos, sin = self.rope(pos0, T, idx.device)
        x = self.drop(self.tok_embeddings(idx))  # (B, T, C)
        ckpt = self.config.grad_checkpoint and self.training and start_pos is None  # decoding has no backward
        for block in self.layers:
            x = checkpoint(block, x, cos, sin, use_reentrant=False) if ckpt else block(x, cos, sin, start_pos)
        x = self.norm(x)
        logits = self.output(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count. non_embedding=True counts the parameters that do matmul work: the token embedding is
        a lookup, left out unless it is tied to the output layer (which is a matmul). RoPE has no parameters."""
        n = sum(p.numel() for p in self.parameters())  # shared (tied) tensors are counted once
        if non_embedding and not self.config.tie_embeddings:
            n -= self.tok_embeddings.weight.numel()
        return n

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 * L * C * T, where the attention
        term uses all n_head query heads (GQA shrinks the k/v projections, counted in N, not q.k or attn.v), and
        T = block_size, with or without a sliding window: the masked dense kernel computes every score, so the
        window saves memory in generation, not FLOPs in training."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def kv_cache_bytes_per_token(self, dtype_bytes=2):
        """KV-cache memory per cached token: keys and values, n_kv_head heads of head size, in every layer.
        (A sliding-window model never caches more than sliding_window tokens.)"""
        cfg = self.config
        return 2 * cfg.n_layer * cfg.n_kv_head * (cfg.n_embd // cfg.n_head) * dtype_bytes

    # ------------------------------------------------------------------------------------------------------------
    # Generate

    def setup_cache(self, batch_size, device, dtype):
        """KV caches in the compute dtype, of block_size slots, or sliding_window slots (Attention.cache_update). A
        window wider than block_size keeps them all: past block_size a token still sees the last sliding_window."""
        cfg = self.config
        cache_len = cfg.block_size if cfg.sliding_window is None else cfg.sliding_window
        shape = (batch_size, cfg.n_kv_head, cache_len, cfg.n_embd // cfg.n_head)
        for block in self.layers:
            block.attention.cache_k = torch.zeros(shape, device=device, dtype=dtype)
            block.attention.cache_v = torch.zeros(shape, device=device, dtype=dtype)

    def free_cache(self):
        for block in self.layers:
            block.attention.cache_k = block.attention.cache_v = None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens (greedy at temperature 0; bad arguments raise ValueError). The prompt
        fills the KV cache once, then each step feeds only the newest token; the cache is freed on return.
        - Full attention (bounded): a longer prompt is prefilled with its last block_size tokens; when the cache fills
          during generation it is refilled once from the most recent block_size // 2 tokens (at positions 0..).
        - Sliding window (Mistral, unbounded): the rolling cache, positions counting on past block_size (RoPE computed
          on the fly); every step equals a full forward over the whole sequence, prompt included (its first
          block_size tokens prefilled at once, the rest fed one at a time)."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        if max_new_tokens == 0:
            return idx
        cfg = self.config
        dev = idx.device.type  # under autocast k/v come out in the autocast dtype: cache them in it
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.output.weight.dtype
        self.setup_cache(idx.size(0), idx.device, dtype)
        keep, window = cfg.block_size // 2, cfg.sliding_window is not None
        context = idx[:, :cfg.block_size] if window else idx[:, -cfg.block_size:]  # the whole prompt if it fits
        logits, _ = self(context, start_pos=0)
        pos = context.size(1)
        while window and pos < idx.size(1):  # the rest of a long prompt, one token at a time via the rolling cache
            logits, _ = self(idx[:, pos:pos + 1], start_pos=pos)
            pos += 1
        for i in range(max_new_tokens):
            idx_next = sample_next(logits[:, -1, :], temperature, top_k, top_p)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            if i == max_new_tokens - 1:
                break
            if not window and pos == cfg.block_size:  # cache full: refill from the recent half
                logits, _ = self(idx[:, -keep:], start_pos=0)
                pos = keep
            else:
                logits, _ = self(idx_next, start_pos=pos)
                pos += 1
        self.free_cache()
        return idx

    # ------------------------------------------------------------------------------------------------------------
    # Hugging Face weights (transformers' LlamaForCausalLM / MistralForCausalLM): pure renaming, no transformers
    # import here. HF stores q/k in the rotate-half layout we use, so no permutation is needed (Meta's original
    # checkpoints pair adjacent dims instead and would need the q/k row permutation).

    _hf_top = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
               "lm_head.weight": "output.weight"}
    _hf_layer = {"self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
                 "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
                 "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.up_proj.weight": "feed_forward.w3.weight",
                 "mlp.down_proj.weight": "feed_forward.w2.weight", "input_layernorm.weight": "attention_norm.weight",
                 "post_attention_layernorm.weight": "ffn_norm.weight"}

    @classmethod
    def from_hf_state_dict(cls, sd, config):
        """Load a LlamaForCausalLM or MistralForCausalLM state dict (the two share key names)."""
        model = cls(config)
        ours = {}
        for k, v in sd.items():
            if "rotary_emb" in k:
                continue  # RoPE frequency buffers in some checkpoints; ours are recomputed from rope_theta
            if k in cls._hf_top:
                ours[cls._hf_top[k]] = v
            else:  # model.layers.{i}.{rest}
                _, _, i, rest = k.split(".", 3)
                ours[f"layers.{i}.{cls._hf_layer[rest]}"] = v
        if config.tie_embeddings and "output.weight" not in ours:
            ours["output.weight"] = ours["tok_embeddings.weight"]  # tied checkpoints may omit lm_head
        model.load_state_dict(ours)
        return model

    def to_hf(self):
        """(config class, config kwargs, model class, state dict) for the same network in transformers:
        Mistral when sliding_window is set (LlamaConfig would silently ignore the window), Llama otherwise."""
        cfg = self.config
        kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=ffn_hidden_dim(cfg),
                      num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                      num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.block_size,
                      rms_norm_eps=cfg.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                      tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu", attention_dropout=0.0,
                      bos_token_id=None, eos_token_id=None)
        top = {v: k for k, v in self._hf_top.items()}
        layer = {v: k for k, v in self._hf_layer.items()}
        sd = {}
        for k, v in self.state_dict().items():
            if k in top:
                sd[top[k]] = v
            else:  # layers.{i}.{rest}
                _, i, rest = k.split(".", 2)
                sd[f"model.layers.{i}.{layer[rest]}"] = v
        if cfg.sliding_window is not None:
            return "MistralConfig", dict(kwargs, sliding_window=cfg.sliding_window), "MistralForCausalLM", sd
        return "LlamaConfig", kwargs, "LlamaForCausalLM", sd


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
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits[drop] = -float("inf")
        logits = torch.full_like(logits, -float("inf")).scatter(-1, sorted_idx, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1)
