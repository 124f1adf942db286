"""
RetNet: a decoder-only language model in which multi-scale retention replaces softmax attention.

Papers:
- Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models" (arXiv 2307.08621);
  section numbers below refer to it.
- Sun et al. 2022, "A Length-Extrapolatable Transformer" (xPos): a rotation times an exponential decay, the
  position scheme that retention builds in.
- Wu & He 2018, "Group Normalization"; Shazeer 2020, "GLU Variants Improve Transformer" (GeGLU).
- The authors' code, torchscale 0.3.0 (`RetNetDecoder`), where the paper leaves a detail open; tests/test_retnet.py
  checks this file against it.

What changed since the previous generation (LLaMA, models/llama.py; in the recurrent line, linear attention,
models/linear_attention.py, which already dropped the softmax for a running sum: retention adds a decay gamma to
that sum, uses q . k without a feature map, and normalises with GroupNorm instead of dividing by phi(q) . z):
- Softmax attention becomes retention, o_n = sum_{m<=n} gamma^(n-m) (q_n . k_m) v_m (section 2.1). Without the
  softmax the same function has three forms: parallel (training, O(T^2) like attention with a decay mask D),
  recurrent (decoding: one d_k x d_v state matrix per head per layer, O(1) per token, no KV cache) and chunkwise
  (parallel inside chunks of `chunk_size`, recurrent across them: linear in T). All three agree (the tests check it).
- Multi-scale: head h decays at its own fixed rate gamma_h = 1 - 2^(-5-h) (section 2.2).
- Positions: xPos-style rotation of q and k on interleaved pairs (RoPE-like, different layout and frequencies) plus
  the decay; nothing learned, no table, so there is no length limit and `generate` runs past block_size.
- The retention output is normalised per head (GroupNorm, here RMS-only as in torchscale) and gated by swish(X W_G).
- Value and gate width 2 * n_embd: the paper doubles W_V and halves the FFN (GELU, width 2d) so that a block keeps a
  Transformer's 12 * n_embd^2 parameters. Here the FFN is a GeGLU of width 4/3 * n_embd: the same 4d^2.
- Pre-norm RMSNorm residual blocks, tied embeddings, no biases (as LLaMA); no GQA, no sliding window.

Precision: the recurrent state and its decays stay in at least float32 whatever the compute dtype: in bf16,
gamma = 1 - 2^(-5-h) rounds to exactly 1.0 for every head h >= 4, and such a state never forgets.

Interface (shared by every file in models/): Config, Model(config), Model.forward(idx, targets=None) -> (logits, loss),
Model.generate(idx, max_new_tokens, temperature, top_k, top_p) with a recurrent state, Model.flops_per_token().
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------------------------
# Norm


def upcast(x):
    """x in at least float32: bf16/fp16 -> float32, float64 stays float64 (so a .double() model is exact)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RMSNorm(nn.Module):
    """x / rms(x) * weight, in at least float32 (Zhang & Sennrich 2019); the pre-norm of every sub-block."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = upcast(x)
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def group_norm(x, eps):
    """GroupNorm with one group per head over the last dim of (B, nh, T, hs) (section 2.2). Heads decay at different
    rates, so their outputs have different variances; normalising each head separately puts them on one scale.
    As in torchscale it is RMS-only and without affine (out_proj absorbs a per-channel scale). What matters is that
    it is scale-invariant: the score normalisations below multiply each (position, head) row by a scalar, which
    this norm removes, so they change the numerics, not the function (up to eps)."""
    x32 = upcast(x)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


# ----------------------------------------------------------------------------------------------------------------
# Position: rotation of q and k, and the per-head decay gamma


def decay_rates(n_head, device, dtype=torch.float32):
    """log gamma_h for every head, section 2.2: gamma = 1 - 2^(-5 - arange(0, h)), so head 0 halves its memory in
    ~22 tokens and head h in ~22 * 2^h. (torchscale 0.3.0 uses the same 1 - 2^(-5 - h), h = 0..n_head-1.)
    Computed in float64 with log1p, then rounded to dtype (>= float32), so gamma stays < 1 even when 2^(-5-h) is
    below float32's resolution at 1. Built on the fly, not a buffer, so model.to(bfloat16) cannot round it."""
    h = torch.arange(n_head, dtype=torch.float64, device=device)
    return torch.log1p(-(2.0 ** (-5.0 - h))).to(dtype)  # (nh,)


def rotation_angles(head_dim, device, dtype=torch.float32):
    """theta_i = 10000^(-i / (d/2 - 1)), i = 0 .. d/2 - 1 (torchscale: 1 / 10000 ** linspace(0, 1, d/2)). Unlike
    RoPE's 10000^(-2i/d) the slowest pair reaches exactly 1/10000."""
    return 1.0 / 10000 ** torch.linspace(0, 1, head_dim // 2, device=device, dtype=dtype)  # (hs/2,)


def rotate(x, pos, theta):
    """Q ⊙ Θ with Θ_n = e^{i n theta} (section 2.1): read each interleaved pair (x_2i, x_2i+1) of x (B, nh, T, hs)
    as a complex number and multiply it by e^{i n theta_i}, n = pos (T,). Rotating q and k by their own positions
    makes q_n . k_m depend on n - m only. Done in at least float32: angles reach n * theta with n in the thousands."""
    angle = pos[:, None] * theta[None, :]  # (T, hs/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = upcast(x)[..., 0::2], upcast(x)[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


def decay_mask(T, log_gamma, dtype):
    """D_nm = gamma^(n-m) for n >= m, else 0 (section 2.1), for every head: (nh, T, T). The exponent is clamped
    at 0 before exp, so nothing above the diagonal can overflow before it is zeroed."""
    n = torch.arange(T, device=log_gamma.device)
    dist = (n[:, None] - n[None, :]).to(log_gamma.dtype)  # (T, T): n - m
    return (torch.exp(dist.clamp(min=0) * log_gamma[:, None, None]) * (dist >= 0)).to(dtype)


def decay_norm(pos, log_gamma):
    """1 / sqrt(sum_{m<=n} D_nm) = 1 / sqrt(sum_{i=0}^{n} gamma^i) for absolute positions n (T,): (nh, T, 1).
    The sum is (1 - gamma^(n+1)) / (1 - gamma), written with expm1 to stay exact as gamma -> 1. It depends only on
    n, so every form (and a state carried over from earlier tokens) applies exactly the same factor."""
    ratio = torch.expm1(log_gamma)[:, None] / torch.expm1((pos[None, :] + 1) * log_gamma[:, None])  # (nh, T)
    return ratio.sqrt().unsqueeze(-1)


# ----------------------------------------------------------------------------------------------------------------
# Retention: three forms of the same (QK^T ⊙ D) V, then the paper's normalisations, gate and output projection
#
# q, k: (B, nh, T, hk), v: (B, nh, T, hv); the forms return (B, nh, T, hv). None of them normalises: the factors of
# section 2.2 are applied afterwards, identically for all three, in MultiScaleRetention.forward.


def retention_parallel(q, k, v, log_gamma):
    """Parallel form (section 2.1): (Q K^T ⊙ D) V. O(T^2) like attention, one big matmul pair for training."""
    D = decay_mask(q.size(2), log_gamma, q.dtype)  # (nh, T, T)
    return ((q @ k.transpose(-2, -1)) * D) @ v


def retention_recurrent(q, k, v, log_gamma, S):
    """Recurrent form (section 2.1): S_n = gamma S_{n-1} + k_n^T v_n, o_n = q_n S_n, one token at a time.
    S (B, nh, hk, hv) summarises every earlier token: O(1) time and memory per token. Returns (o, S). S and gamma
    stay in at least float32; the products are elementwise, which autocast does not lower to bf16."""
    S = upcast(S)
    gamma = log_gamma.exp().to(S.dtype)[:, None, None]  # (nh, 1, 1), < 1 for every head
    q, k, v = q.to(S.dtype), k.to(S.dtype), v.to(S.dtype)
    out = []
    for t in range(q.size(2)):
        S = gamma * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, nh, hk, hv): decay, then add k_t^T v_t
        out.append((q[:, :, t, :, None] * S).sum(-2, keepdim=True))  # q_t S_t: (B, nh, 1, hv)
    return torch.cat(out, dim=2), S


def retention_chunkwise(q, k, v, log_gamma, chunk_size, S=None):
    """Chunkwise recurrent form (section 2.1). Split T into chunks of C tokens; for chunk i with state R_{i-1}
    summarising all earlier chunks:
        o_[i] = (Q_[i] K_[i]^T ⊙ D) V_[i]  +  (Q_[i] R_{i-1}) ⊙ xi,    xi_j = gamma^(j+1)    (inside + across)
        R_i   = K_[i]^T (V_[i] ⊙ zeta)  +  gamma^C R_{i-1},            zeta_j = gamma^(C-1-j)
    Every factor is a power of gamma <= 1, so nothing grows with T. The in-chunk parts of all chunks are batched;
    only the cheap state update loops. S (B, nh, hk, hv) is an optional state from earlier tokens (generation).
    The matmuls run in the dtype of q, k, v (bf16 under autocast: each output is rounded once); R and gamma^C,
    which compound across chunks, stay in at least float32.
    A length not divisible by C is zero-padded at the end: zero keys and values add nothing, and causality keeps
    the padding out of the real outputs, which are cut back to T."""
    (B, nh, T, hk), hv = q.shape, v.size(-1)
    C = min(chunk_size, T)
    N = -(-T // C)  # number of chunks, rounded up
    pad = N * C - T
    q, k, v = (F.pad(t, (0, 0, 0, pad)).view(B, nh, N, C, t.size(-1)) for t in (q, k, v))  # (B, nh, N, C, h)

    j = torch.arange(C, device=q.device, dtype=log_gamma.dtype)
    xi = torch.exp((j + 1) * log_gamma[:, None]).to(q.dtype)[:, None, :, None]  # (nh, 1, C, 1)
    zeta = torch.exp((C - 1 - j) * log_gamma[:, None]).to(q.dtype)[:, None, :, None]  # (nh, 1, C, 1)
    gamma_C = torch.exp(C * log_gamma)[:, None, None]  # (nh, 1, 1), in log_gamma's dtype (>= float32)

    D = decay_mask(C, log_gamma, q.dtype)[:, None]  # (nh, 1, C, C), the same for every chunk
    inner = ((q @ k.transpose(-2, -1)) * D) @ v  # (B, nh, N, C, hv)
    kv = k.transpose(-2, -1) @ (v * zeta)  # (B, nh, N, hk, hv): each chunk's contribution to the state

    # The state sums many decayed chunks: keep it in at least float32 even when the matmuls run in bf16.
    sdt = torch.promote_types(q.dtype, torch.float32)
    R = torch.zeros(B, nh, hk, hv, device=q.device, dtype=sdt) if S is None else upcast(S)
    states = []
    for i in range(N):
        states.append(R)  # R_{i-1}: what chunk i sees from before it
        R = gamma_C.to(R.dtype) * R + kv[:, :, i]
    cross = (q * xi) @ torch.stack(states, dim=2).to(q.dtype)  # (B, nh, N, C, hv)
    return (inner + cross).view(B, nh, N * C, hv)[:, :, :T]


def advance_state(S, k, v, log_gamma):
    """The recurrent state after T more tokens, in closed form: S_T = gamma^T S_0 + sum_m gamma^(T-1-m) k_m^T v_m.
    Used after a multi-token (prompt) step so that decoding can continue with the recurrent form. The sum is one
    matmul in the dtype of k, v; S and gamma^T stay in at least float32."""
    S = upcast(S)
    T = k.size(2)
    m = torch.arange(T, device=k.device, dtype=log_gamma.dtype)
    w = torch.exp((T - 1 - m) * log_gamma[:, None]).to(v.dtype)[..., None]  # (nh, T, 1)
    return torch.exp(T * log_gamma).to(S.dtype)[:, None, None] * S + k.transpose(-2, -1) @ (v * w)


class MultiScaleRetention(nn.Module):
    """MSR(X) = (swish(X W_G) ⊙ GroupNorm_h(Concat(head_1..head_h))) W_O, head_h = Retention(X, gamma_h)."""

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head  # d_k per head (q, k)
        self.v_head_dim = config.value_factor * config.n_embd // config.n_head  # d_v per head (v, gate)
        v_dim = self.v_head_dim * config.n_head
        self.q_proj, self.k_proj = (nn.Linear(config.n_embd, config.n_embd, bias=False) for _ in range(2))  # W_Q, W_K
        self.v_proj, self.g_proj = (nn.Linear(config.n_embd, v_dim, bias=False) for _ in range(2))  # W_V, W_G: the gate
        self.out_proj = nn.Linear(v_dim, config.n_embd, bias=False)  # W_O
        self.resid_dropout = nn.Dropout(config.dropout)
        self.mode, self.chunk_size, self.eps = config.retention_mode, config.chunk_size, config.norm_eps
        self.state = None  # (B, nh, hk, hv + 1), at least float32, set by Model.setup_cache for generation

    def forward(self, x, start_pos=None):
        B, T, C = x.size()
        pos0 = 0 if start_pos is None else start_pos
        sdt = torch.promote_types(self.q_proj.weight.dtype, torch.float32)  # float32, or float64 if .double()
        pos = torch.arange(pos0, pos0 + T, device=x.device, dtype=sdt)  # absolute positions (T,)
        log_gamma = decay_rates(self.n_head, x.device, sdt)  # (nh,)
        theta = rotation_angles(self.head_dim, x.device, sdt)  # (hk/2,)

        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hk)
        k = self.k_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hk)
        v = self.v_proj(x).view(B, T, self.n_head, self.v_head_dim).transpose(1, 2)  # (B, nh, T, hv)
        q, k = rotate(q, pos, theta), rotate(k, pos, theta) * self.head_dim ** -0.5  # QK^T / sqrt(d), section 2.2
        # A column of ones appended to v: the same products then also return the row sums sum_m D_nm q_n.k_m that
        # the score normalisation below needs, in every form (in the recurrent one it is the last state column).
        v = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)  # (B, nh, T, hv + 1)

        if start_pos is None:  # training: the form chosen in the config
            o = (retention_chunkwise(q, k, v, log_gamma, self.chunk_size) if self.mode == "chunkwise"
                 else retention_parallel(q, k, v, log_gamma))
        else:  # generation: continue from the state
            if self.state is None:
                raise ValueError("call Model.setup_cache(batch_size, device, dtype) before forward(start_pos=...)")
            if T == 1:  # one new token: the recurrent form
                o, self.state = retention_recurrent(q, k, v, log_gamma, self.state)
            else:  # a prompt: chunkwise from the state, then the state after it in closed form
                o = retention_chunkwise(q, k, v, log_gamma, self.chunk_size, self.state)
                self.state = advance_state(self.state, k, v, log_gamma)

        # Retention score normalisation (section 2.2), identical in all forms, so the forms agree for any eps:
        # D~_nm = D_nm / sqrt(sum_i D_ni) (one factor per row), then R~_nm = R_nm / max(|sum_i R_ni|, 1). The
        # denominator is detached (as torchscale): it is a per-row scale, which the group norm removes anyway.
        o = upcast(o) * decay_norm(pos, log_gamma)  # (B, nh, T, hv + 1)
        o, row_sum = o[..., :-1], o[..., -1:]
        o = o / row_sum.detach().abs().clamp(min=1)
        o = group_norm(o, self.eps).type_as(x)  # (B, nh, T, hv)
        o = o.transpose(1, 2).reshape(B, T, self.n_head * self.v_head_dim)  # heads side by side (B, T, dv)
        return self.resid_dropout(self.out_proj(F.silu(self.g_proj(x)) * o))


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward


class GeGLU(nn.Module):
    """fc2(gelu(fc1(x)) * gate(x)): the GLU variant with GELU (Shazeer 2020), as torchscale's RetNet FFN with its
    default activation. The paper's FFN is gelu(X W1) W2 of width 2d; three matrices of width 4d/3 cost the same."""

    def __init__(self, config):
        super().__init__()
        hidden = int(config.ffn_mult * config.n_embd)
        self.fc1, self.gate = (nn.Linear(config.n_embd, hidden, bias=False) for _ in range(2))
        self.fc2 = nn.Linear(hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.fc2(F.gelu(self.fc1(x)) * self.gate(x)))


# ----------------------------------------------------------------------------------------------------------------
# Block


class Block(nn.Module):
    """Section 2.3: Y = MSR(LN(X)) + X, X' = FFN(LN(Y)) + Y (pre-norm; RMSNorm as in torchscale)."""

    def __init__(self, config):
        super().__init__()
        self.ln_1, self.retention = RMSNorm(config.n_embd, config.norm_eps), MultiScaleRetention(config)
        self.ln_2, self.ffn = RMSNorm(config.n_embd, config.norm_eps), GeGLU(config)

    def forward(self, x, start_pos=None):
        x = x + self.retention(self.ln_1(x), start_pos)
        return x + self.ffn(self.ln_2(x))


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    block_size: int = 1024  # training context length; retention itself has no length limit
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 3  # head dim 256 at n_embd 768, as torchscale's base config (few wide heads)
    n_embd: int = 768
    value_factor: int = 2  # d_v = value_factor * n_embd for W_V and W_G (the paper doubles W_V)
    ffn_mult: float = 4 / 3  # GeGLU width = int(ffn_mult * n_embd): the paper's 2d-wide FFN parameter count
    dropout: float = 0.0
    # eps of the RMSNorms and the per-head group norm (torchscale's layernorm_eps). Our three forms apply the same
    # normalisation factors, so they agree at any eps; torchscale's forms agree with each other only as eps -> 0.
    norm_eps: float = 1e-6
    retention_mode: str = "parallel"  # training form: 'parallel' (O(T^2)) or 'chunkwise' (linear in T)
    chunk_size: int = 64  # chunk length of the chunkwise form (also used for prompts in generate)
    grad_checkpoint: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute


# ----------------------------------------------------------------------------------------------------------------
# Model


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        c, hs = config, config.n_embd // config.n_head
        for bad, msg in ((c.n_embd % c.n_head, f"n_embd ({c.n_embd}) must be divisible by n_head ({c.n_head})"),
                         (hs % 2, f"head dim n_embd // n_head ({hs}) must be even: q and k are rotated in pairs"),
                         (c.value_factor < 1, f"value_factor ({c.value_factor}) must be a positive integer"),
                         (c.retention_mode not in ("parallel", "chunkwise"),
                          f"retention_mode ({c.retention_mode!r}) must be 'parallel' or 'chunkwise'"),
                         (c.chunk_size < 1, f"chunk_size ({c.chunk_size}) must be >= 1")):
            if bad:
                raise ValueError(msg)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=RMSNorm(config.n_embd, config.norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as GPT-2/nanoGPT (the paper does not say)

        # Init: std 0.02 everywhere and GPT-2's 0.02 / sqrt(2 * n_layer) for the projections that write into the
        # residual stream. (torchscale instead uses Xavier-uniform with gain 2^-2.5 for W_Q, W_K, W_V, W_G.)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, start_pos=None):
        """start_pos: None for training (the config's retention form over the whole sequence); an int for
        generation, where idx continues a sequence of start_pos tokens summarised by the state (setup_cache)."""
        x = self.transformer.drop(self.transformer.wte(idx))  # (B, T, C); no position embedding
        ckpt = self.config.grad_checkpoint and self.training and start_pos is None  # decoding has no backward
        for block in self.transformer.h:
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x, start_pos)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.view(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count. There is no position table to leave out, and the token embedding is tied to lm_head,
        which does matmul work, so it is counted either way."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward) = 6N + 3 * (retention's forward FLOPs that are not
        parameter matmuls), with d = n_embd, d_v = value_factor * d, T = block_size, per layer:
          parallel:  q_n . k_m and R v over T positions: 2T(d + d_v)        -> 6N + 6 L T (d + d_v)
          chunkwise: the same over C = min(chunk_size, T) positions, plus q S and the state update, each
                     2 d d_v / n_head                                           -> 6N + 6 L (C (d + d_v) + 2 d d_v / nh)
        Like gpt2.py (PaLM appendix B) the causal half is not subtracted; the extra ones column of v is ignored."""
        cfg = self.config
        d, dv, L = cfg.n_embd, cfg.value_factor * cfg.n_embd, cfg.n_layer
        if cfg.retention_mode == "chunkwise":
            C = min(cfg.chunk_size, cfg.block_size)
            return 6 * self.num_params() + 6 * L * (C * (d + dv) + 2 * d * dv // cfg.n_head)
        return 6 * self.num_params() + 6 * L * cfg.block_size * (d + dv)

    # ------------------------------------------------------------------------------------------------------------
    # Generate

    def setup_cache(self, batch_size, device, dtype):
        """A zero state per layer: (B, nh, hk, hv + 1), the last column being the row-sum tracker (see forward).
        No KV cache takes the compute dtype: the state is in promote_types(weight dtype, float32)."""
        sdt = torch.promote_types(self.lm_head.weight.dtype, torch.float32)
        for r in (block.retention for block in self.transformer.h):
            r.state = torch.zeros((batch_size, r.n_head, r.head_dim, r.v_head_dim + 1), device=device, dtype=sdt)

    def free_cache(self):
        for block in self.transformer.h:
            block.retention.state = None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens; greedy at temperature 0. The whole prompt (no length limit, so
        none is cut) is run once, chunkwise, and leaves one state matrix per head per layer; each further token is
        one recurrent step: constant time and memory per token. The state is freed before returning. Bad arguments
        raise ValueError (check_generate_args)."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        if max_new_tokens == 0:
            return idx
        dev = idx.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.lm_head.weight.dtype
        self.setup_cache(idx.size(0), idx.device, dtype)
        logits, _ = self(idx, start_pos=0)
        pos = idx.size(1)
        for i in range(max_new_tokens):
            idx_next = sample_next(logits[:, -1, :], temperature, top_k, top_p)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            if i == max_new_tokens - 1:
                break
            logits, _ = self(idx_next, start_pos=pos)
            pos += 1
        self.free_cache()
        return idx

    # ------------------------------------------------------------------------------------------------------------
    # Hugging Face weights: transformers has no RetNet class, so there is no from_hf_state_dict / to_hf here.
    # tests/test_retnet.py maps these weights onto torchscale's RetNetDecoder by renaming keys (ln_1 ->
    # retention_layer_norm, ln_2 -> final_layer_norm, retention -> retention, ffn -> ffn, ln_f -> layer_norm).


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def check_generate_args(idx, max_new_tokens, temperature, top_k, top_p):
    """generate's argument check, before any work: a ValueError that names the argument and what is allowed."""
    for bad, msg in ((idx.size(1) == 0, "idx is an empty prompt: generate needs at least one token to condition on"),
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
