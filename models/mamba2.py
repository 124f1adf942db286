"""
Mamba-2: Mamba with a scalar decay per head, so that its selective SSM is also a masked attention and trains as
matmuls: the state-space duality (SSD).

Papers:
- Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
  Duality" (arXiv 2405.21060); section numbers below refer to it.
- Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (models/mamba.py).
- Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (RMSNorm, here also gated and grouped).
- The authors' code (mamba_ssm: Mamba2, ssd_minimal.py) where the paper leaves a detail open (A's init range, the
  in_proj order, the gated norm's group size, chunk_size 256); the parameter names are theirs, so transformers'
  Mamba2ForCausalLM loads with no renaming (tests/test_mamba2.py).

What changed since the previous generation (Mamba, models/mamba.py):
- The decay is a scalar per head: A_h = -exp(A_log_h), and the step exp(dt_t A_h) is shared by the head's P channels
  and N state dimensions (Mamba-1: one per channel and state dimension). Then the head's SSM over a sequence is
  y = (L o C B^T) (dt x) with the 1-semiseparable mask L[t, s] = exp(dt_{s+1} A + ... + dt_t A) (sections 3-5):
  masked attention with C as queries, B as keys, dt x as values. Training runs it as matmuls, quadratic inside
  chunks and a recurrence across them (SSD, section 6); decoding keeps the recurrence. Both forms compute the same.
- Multi-head: E = expand * d_model channels in H heads of head_dim P = 64 (the heads of a Transformer); B and C
  are shared by all heads of a group (n_groups G = 1 by default: the "multi-value" pattern, section 7.2), and the
  state is larger (N = 64..256 instead of 16), since in the matmul form a bigger state costs little.
- Parallel projections: in_proj computes z, x, B, C and dt at once from the block input (section 7.1), instead of
  B, C and dt from x after the convolution (x_proj and dt_proj are gone; dt is one number per head, plus dt_bias).
  The causal convolution runs over x, B and C.
- An extra norm before out_proj: RMSNorm(y * silu(z)) per group (section 7.1: stability at scale).
- Kept: the D skip, the causal conv, pre-norm RMSNorm residuals, tied embeddings, no biases, no positions, and a
  constant-size decoding state, (H, P, N) per layer.

Its place in the chain: linear attention (models/linear_attention.py, Katharopoulos et al. 2020: y = (1 o Q K^T) V,
no decay) -> RetNet (a fixed decay per head, L[t, s] = gamma^(t-s)) -> Mamba (an input-dependent decay per channel
and state dimension: no attention form left) -> Mamba-2 (an input-dependent decay per head: RetNet with gamma_t
chosen by the token, or Mamba with A restricted to a scalar times the identity; both forms are back).

Interface (shared by every file in models/): Config, Model(config), Model.forward(idx, targets=None) -> (logits, loss),
Model.generate(idx, max_new_tokens, temperature, top_k, top_p) with a recurrent state, Model.flops_per_token().

Notation (the paper's): b batch, l sequence length, d = d_model, E = d_inner = expand * d, H heads, P = head_dim,
N = d_state, G = n_groups, Q = chunk length; in einsums c, z chunks and t, s steps inside a chunk.
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
    """x / rms(x) * weight, computed in at least float32 (as the reference) so bf16 activations keep the scale."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * F.rms_norm(upcast(x), x.shape[-1:], eps=self.eps).type_as(x)


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) * weight, the RMS taken over groups of group_size channels (the reference's
    RMSNormGated with norm_before_gate=False; one group per B/C group, so a tensor-parallel shard normalises alone)."""

    def __init__(self, dim, group_size, eps):
        super().__init__()
        self.eps, self.group_size, self.weight = eps, group_size, nn.Parameter(torch.ones(dim))

    def forward(self, y, z):
        y = (upcast(y) * F.silu(upcast(z))).unflatten(-1, (-1, self.group_size))  # (..., G, E / G)
        return self.weight * F.rms_norm(y, (self.group_size,), eps=self.eps).flatten(-2)


# ----------------------------------------------------------------------------------------------------------------
# Position: none. The causal convolution and the recurrence see the order of the tokens: no table, no length limit.


# ----------------------------------------------------------------------------------------------------------------
# Mixer: the SSD layer (section 6) inside the Mamba-2 block (section 7.1, Figure 6)
#
# For every head h (channels p, state dimensions n), with dt_t > 0 and A_h < 0, as Mamba-1 but A_h a scalar:
#     h_t = exp(dt_t A_h) * h_{t-1} + (dt_t x_t) B_t^T        (P x N state; B_t, C_t from the head's group)
#     y_t = h_t C_t  (sum over n)  + D_h * x_t
# Unrolled: y_t = sum_{s<=t} exp(a_{s+1} + ... + a_t) (C_t . B_s) dt_s x_s with a_t = dt_t A_h, i.e. y = (L o C B^T) X.
#
# ssd (training, prompts): chunks of Q steps (chunk_size, 256 in the reference), all as batched matmuls.
#   1. Inside each chunk: the quadratic (attention) form, Y = (L o C B^T) X over Q x Q blocks.
#   2. Each chunk's own end state, as if it started from zero: sum_s decay(s -> chunk end) X_s B_s^T.
#   3. Across chunks: the state entering each chunk is a decayed sum of the earlier chunks' end states: the same
#      masked matmul once more, over chunks (l / Q of them) instead of steps.
#   4. Each step reads the state entering its chunk, decayed to it: C_t . state * exp(a_1 + ... + a_t).
#   Work O(l Q (N + P)) per head, memory linear in l. Stability: every decay is exp of a sum of non-positive terms,
#   each formed as a direct sum over its segment (segsum), never as cumsum[t] - cumsum[s]: the difference of two
#   large cumsums loses its digits (float32, a cumsum of -1e4 leaves ~1e-3 absolute error in a short segment), and
#   exp(cumsum[t]) / exp(cumsum[s]) overflows. A huge dt gives decay 0 (a reset), nothing inf or NaN at any length.
# ssd_step (decoding): the recurrence for one token from the carried (H, P, N) state: the same cost at any position.


def segsum_exp(a):
    """a (..., Q) per-step log-decays -> (..., Q, Q): [t, s] = exp(a_{s+1} + ... + a_t) for s <= t, 1 above the
    diagonal (the decay mask before its causal mask). Each exponent is summed over its own segment ("segsum"): a
    masked to the steps after s, cumsum down the rows. No exp of a positive number, no -inf (no NaN in backward)."""
    ones = torch.ones(a.size(-1), a.size(-1), dtype=a.dtype, device=a.device)
    return torch.exp((a[..., None] * ones.tril(-1)).cumsum(-2))  # exp(sum of a_k over s < k <= t); exp(0) if t <= s


def decay_mask(a):
    """The causal decay mask L (..., Q, Q): L[t, s] = exp(a_{s+1} + ... + a_t) for s <= t, 0 above the diagonal."""
    return segsum_exp(a).tril()


def ssd(x, dt, A, B, C, chunk_size, h0=None, final_state=True):
    """The SSM over a whole sequence (without the D skip).
    x (b, l, H, P); dt (b, l, H); A (H,); B, C (b, l, G, N); h0 (b, H, P, N), the state before the first step, or None
    for zeros. Returns y (b, l, H, P) and the state after the last step (b, H, P, N), or None for it when final_state
    is False and nothing needs it. Runs in the inputs' dtype (at least float32) with autocast off: these sums and
    decays are the recurrent state."""
    (b, l, H, P), (G, N) = x.shape, B.shape[2:]
    Q = min(chunk_size, l)  # a short sequence is one chunk, not padded up to chunk_size
    nc = -(-l // Q)
    if nc * Q > l:  # pad the end with dt = 0 (decay 1, input 0): padded steps leave the state as it is
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, nc * Q - l)) for t in (x, dt, B, C))
    with torch.autocast(x.device.type, enabled=False):
        X = (x * dt[..., None]).view(b, nc, Q, G, H // G, P)  # discretised input dt x; heads grouped (g, j)
        B, C = B.view(b, nc, Q, G, N), C.view(b, nc, Q, G, N)
        a = (dt * A).view(b, nc, Q, H).permute(0, 3, 1, 2)  # (b, H, nc, Q) log-decay of each step, <= 0

        def per_step(w):  # (b, H, nc, Q) -> (b, nc, Q, G, H / G, 1), to scale X or y step by step
            return w.permute(0, 2, 3, 1).reshape(b, nc, Q, G, H // G, 1)

        # 1. within chunks (the diagonal blocks): masked attention with the decay mask
        L = segsum_exp(a).view(b, G, H // G, nc, Q, Q)  # (b, G, H/G, nc, Q, Q), causal mask still to apply
        CB = torch.einsum("bctgn,bcsgn->bgcts", C, B).tril()  # (b, G, nc, Q, Q) causal, once per group of heads
        y = torch.einsum("bgjcts,bcsgjp->bctgjp", L * CB[:, :, None], X)  # (b, nc, Q, G, H/G, P)
        if nc == 1 and h0 is None and not final_state:  # one chunk from zero is the whole sequence (training at
            return y.reshape(b, Q, H, P)[:, :l], None     # T <= chunk_size): no state to pass on or read back

        a_cum = a.cumsum(-1)  # (b, H, nc, Q) log-decay from the chunk's start through step t
        # 2. each chunk's end state from zero: the last row of L is the decay from each step to the chunk's end
        states = torch.einsum("bcsgn,bcsgjp->bcgjpn", B, X * per_step(L[..., -1, :].flatten(1, 2)))

        # 3. across chunks: slot 0 holds h0, slot c + 1 the end state of chunk c; the decay mask over the chunks'
        #    total log-decays gives the decay between slots, and one masked matmul the state entering every chunk
        h0 = torch.zeros_like(states[:, :1]) if h0 is None else h0.view(b, 1, G, H // G, P, N)
        states = torch.cat([h0, states], dim=1)  # (b, nc + 1, G, H/G, P, N)
        decay = decay_mask(F.pad(a_cum[..., -1], (1, 0))).view(b, G, H // G, nc + 1, nc + 1)
        states = torch.einsum("bgjzc,bcgjpn->bzgjpn", decay, states)  # state after slot z
        h_in, h_last = states[:, :-1], states[:, -1]  # entering each chunk; after the last step

        # 4. the carried-in state, decayed from the chunk's start to step t, read out with C_t
        y = y + torch.einsum("bctgn,bcgjpn->bctgjp", C, h_in) * per_step(torch.exp(a_cum))
    return y.reshape(b, nc * Q, H, P)[:, :l], h_last.reshape(b, H, P, N)


def ssd_step(h, x, dt, A, B, C):
    """One step of the recurrence: h (b, H, P, N); x (b, H, P); dt (b, H); A (H,); B, C (b, G, N).
    Returns y (b, H, P) and the new state. Elementwise, so autocast leaves it in the state's dtype."""
    H, G = x.size(1), B.size(1)
    B, C = B.repeat_interleave(H // G, dim=1), C.repeat_interleave(H // G, dim=1)  # head h reads group h // (H/G)
    h = torch.exp(dt * A)[..., None, None] * h + (dt[..., None] * x)[..., None] * B[:, :, None, :]  # (b, H, P, N)
    return (h * C[:, :, None, :]).sum(-1), h


class Mixer(nn.Module):
    """The Mamba-2 block of Figure 6: in_proj -> (z, x, B, C, dt); (x, B, C) -> causal conv -> SiLU; SSD over heads;
    + D x; RMSNorm(y * silu(z)); out_proj. Parameter names and shapes are the reference's."""

    def __init__(self, config):
        super().__init__()
        d, N, K, G, P = config.d_model, config.d_state, config.d_conv, config.n_groups, config.head_dim
        E, H = config.expand * d, config.expand * d // P
        self.d_inner, self.d_state, self.d_conv, self.n_groups, self.n_heads, self.head_dim = E, N, K, G, H, P
        self.conv_dim = E + 2 * G * N  # the conv runs over x, B and C
        self.in_proj = nn.Linear(d, E + self.conv_dim + H, bias=False)  # (z, x, B, C, dt) packed, the reference's order
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, K, groups=self.conv_dim, bias=True)  # depthwise
        # dt = softplus(in_proj's dt + dt_bias); dt_bias = softplus^-1 of a step size log-uniform in [dt_min, dt_max]
        log_dt = torch.rand(H) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min)
        dt = torch.exp(log_dt).clamp(min=config.dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # (H,)
        # A = -exp(A_log) < 0, one per head, initialised uniform in [1, 16] (the reference's A_init_range)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(*config.A_init_range)))  # (H,)
        self.D = nn.Parameter(torch.ones(H))  # skip connection, y += D_h * x
        self.norm = GatedRMSNorm(E, E // G, config.norm_eps)
        self.out_proj = nn.Linear(E, d, bias=False)
        self.chunk_size, self.dt_limit = config.chunk_size, tuple(config.dt_limit)
        self.recompute = config.recompute_ssd and not config.grad_checkpoint  # a checkpointed block recomputes it
        self.conv_state = self.ssm_state = None  # set by Model.setup_cache for generation

    def causal_conv(self, xBC, conv_state):
        """Depthwise causal conv over time as K shifted multiply-adds in the (b, l, channels) layout: no transposes,
        and on CPU 1.5-2x faster than conv1d's depthwise kernel with its backward. xBC (b, l, E + 2GN); conv_state
        (b, K-1, E + 2GN), the K-1 inputs before it (None: zeros). Returns the output and the new state."""
        K, l = self.d_conv, xBC.size(1)
        x = F.pad(xBC, (0, 0, K - 1, 0)) if conv_state is None else torch.cat([conv_state.to(xBC.dtype), xBC], dim=1)
        w = self.conv1d.weight[:, 0]  # (E + 2GN, K); tap K-1 meets the current step, as in conv1d
        y = torch.addcmul(self.conv1d.bias, x[:, :l], w[:, 0])
        for k in range(1, K):
            y = torch.addcmul(y, x[:, k:k + l], w[:, k])
        return y, x[:, l:]

    def forward(self, u, start_pos=None):
        """u (b, l, d). start_pos None: training, a whole sequence from a zero state. Otherwise generation: the
        (conv_state, ssm_state) left by the previous call are continued and updated (start_pos itself is not needed)."""
        b, l, _ = u.shape
        E, H, P, G, N = self.d_inner, self.n_heads, self.head_dim, self.n_groups, self.d_state
        z, xBC, dt = self.in_proj(u).split([E, self.conv_dim, H], dim=-1)  # (b, l, E), (b, l, E + 2GN), (b, l, H)
        decoding = start_pos is not None
        xBC, conv_state = self.causal_conv(xBC, self.conv_state if decoding else None)
        x, B, C = F.silu(xBC).split([E, G * N, G * N], dim=-1)
        # The SSM runs in at least float32 whatever the autocast dtype (as the reference kernels): long decayed sums.
        x, B, C = upcast(x).unflatten(-1, (H, P)), upcast(B).unflatten(-1, (G, N)), upcast(C).unflatten(-1, (G, N))
        dt = F.softplus(upcast(dt) + upcast(self.dt_bias))  # (b, l, H) step sizes, > 0
        if self.dt_limit != (0.0, math.inf):  # the reference's dt_limit, applied after the softplus; none by default
            dt = dt.clamp(*self.dt_limit)
        A = -torch.exp(upcast(self.A_log))  # (H,), < 0
        h0 = self.ssm_state if decoding else None
        if decoding and l == 1:
            y, h = ssd_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
            y = y[:, None]  # (b, 1, H, P)
        elif self.recompute and torch.is_grad_enabled():
            # Keep only the inputs of ssd and recompute its (b, H, l, Q) decay masks and products in backward.
            y, h = checkpoint(ssd, x, dt, A, B, C, self.chunk_size, h0, decoding, use_reentrant=False)
        else:
            y, h = ssd(x, dt, A, B, C, self.chunk_size, h0, final_state=decoding)
        if decoding:
            self.conv_state, self.ssm_state = conv_state, h
        y = torch.addcmul(y, x, upcast(self.D)[:, None]).flatten(2)  # (b, l, E), the D skip per head
        return self.out_proj(self.norm(y, z).to(u.dtype))


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward: none. As in Mamba-1, the gated mixer (expand = 2, silu(z) gate) is the block's MLP as well.


# ----------------------------------------------------------------------------------------------------------------
# Block


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = Mixer(config)

    def forward(self, x, start_pos=None):
        return x + self.mixer(self.norm(x), start_pos)  # pre-norm residual


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    block_size: int = 1024  # training sequence length only; the model itself has no length limit
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 (mamba2-130m pads its 50277 to 50288)
    n_layer: int = 24
    d_model: int = 768  # mamba2-130m: 24 layers x 768, 24 heads of 64, d_state 128
    d_state: int = 128  # N, the state per head channel (Mamba-1: 16)
    d_conv: int = 4  # K, width of the causal depthwise convolution
    expand: int = 2  # E = expand * d_model channels inside the block
    head_dim: int = 64  # P; H = E / P heads
    n_groups: int = 1  # G groups of heads sharing B and C
    chunk_size: int = 256  # Q, steps per chunk of the SSD form
    A_init_range: tuple = (1.0, 16.0)  # A_h = -uniform(range) at init
    dt_min: float = 0.001  # range of the initial step sizes
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple = (0.0, math.inf)  # dt clamped to this range after the softplus (the reference's default: none)
    norm_eps: float = 1e-5
    recompute_ssd: bool = False  # recompute the SSD's chunk matrices in backward instead of keeping them
    grad_checkpoint: bool = False  # recompute whole blocks in backward (the SSD included): keeps only their inputs


# ----------------------------------------------------------------------------------------------------------------
# Model


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        c = config
        if min(c.d_model, c.expand, c.n_layer, c.head_dim, c.n_groups) < 1:
            raise ValueError("d_model, expand, n_layer, head_dim and n_groups must all be >= 1")
        if c.d_model * c.expand % c.head_dim:
            raise ValueError(f"d_model * expand ({c.d_model * c.expand}) must be divisible by head_dim ({c.head_dim})"
                             "; change head_dim or d_model")
        if c.d_model * c.expand // c.head_dim % c.n_groups:
            raise ValueError(f"the number of heads ({c.d_model * c.expand // c.head_dim}) must be divisible by "
                             f"n_groups ({c.n_groups}); change n_groups or head_dim")
        if c.d_state < 1:
            raise ValueError(f"d_state ({c.d_state}) must be >= 1")
        if c.chunk_size < 1:
            raise ValueError(f"chunk_size ({c.chunk_size}) must be >= 1 (steps per SSD chunk; 256 in the reference)")
        if c.d_conv < 2:
            raise ValueError(f"d_conv ({c.d_conv}) must be >= 2: the convolution carries d_conv - 1 past inputs")
        if not 0 < c.dt_min <= c.dt_max:
            raise ValueError(f"need 0 < dt_min ({c.dt_min}) <= dt_max ({c.dt_max})")
        if len(c.dt_limit) != 2 or not 0 <= c.dt_limit[0] < c.dt_limit[1]:
            raise ValueError(f"dt_limit ({c.dt_limit}) must be (low, high) with 0 <= low < high")
        self.config = config
        self.backbone = nn.ModuleDict(dict(
            embeddings=nn.Embedding(config.vocab_size, config.d_model),
            layers=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            norm_f=RMSNorm(config.d_model, config.norm_eps),
        ))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.backbone.embeddings.weight = self.lm_head.weight  # tied, as the reference

        # Init follows the reference: embedding N(0, 0.02); in_proj and conv1d keep PyTorch's default (uniform
        # +-1/sqrt(fan_in)); dt_bias, A_log and D as in Mixer; out_proj, which writes into the residual stream,
        # scaled by 1/sqrt(n_layer) (GPT-2's rule, one residual addition per layer).
        # The reference excludes dt_bias, A_log and D from weight decay; the flag says so to the optimizer.
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)
        with torch.no_grad():
            for m in (block.mixer for block in self.backbone.layers):
                m.out_proj.weight.div_(math.sqrt(config.n_layer))
                m.dt_bias._no_weight_decay = m.A_log._no_weight_decay = m.D._no_weight_decay = True

    def forward(self, idx, targets=None, start_pos=None):
        """start_pos: None for training (each sequence from a zero state); an int for generation, where idx
        continues a sequence of start_pos tokens summarised by the per-layer states (setup_cache)."""
        x = self.backbone.embeddings(idx)  # (B, T, C); no position embedding
        ckpt = self.config.grad_checkpoint and self.training and start_pos is None  # decoding has no backward
        for block in self.backbone.layers:
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x, start_pos)
        logits = self.lm_head(self.backbone.norm_f(x))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.view(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count. There is no position table to leave out, and the token embedding is tied to lm_head,
        which does matmul work, so it is counted either way."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward) = 6N + 3 * (the SSD's forward FLOPs per token). The conv and
        the projections are parameter multiply-adds, inside 6N. Per layer and token, with Q = min(chunk_size, T):
        C B^T over the chunk 2 Q G N, (L o C B^T) X 2 Q E, the chunk end states 2 E N, the read-out of the carried
        state 2 E N (the decay masks and the chunk-to-chunk pass are O(Q H) and O(E N l / Q^2): left out)."""
        cfg = self.config
        Q, E = min(cfg.chunk_size, cfg.block_size), cfg.expand * cfg.d_model
        ssd_fwd = 2 * Q * (cfg.n_groups * cfg.d_state + E) + 4 * E * cfg.d_state  # per layer and token
        return 6 * self.num_params() + 3 * cfg.n_layer * ssd_fwd

    # ------------------------------------------------------------------------------------------------------------
    # Generate

    def setup_cache(self, batch_size, device, dtype):
        """Zero states per layer: the last K-1 conv inputs (B, K-1, E + 2GN), which are inputs, not a recurrence, in
        the compute dtype; and the SSM state (B, H, P, N), a long decayed sum, in promote_types(weight dtype,
        float32). This is all a Mamba-2 layer remembers, however long the sequence."""
        sdt = torch.promote_types(self.lm_head.weight.dtype, torch.float32)
        for m in (block.mixer for block in self.backbone.layers):
            m.conv_state = torch.zeros(batch_size, m.d_conv - 1, m.conv_dim, device=device, dtype=dtype)
            m.ssm_state = torch.zeros(batch_size, m.n_heads, m.head_dim, m.d_state, device=device, dtype=sdt)

    def free_cache(self):
        for block in self.backbone.layers:
            block.mixer.conv_state = block.mixer.ssm_state = None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens; greedy at temperature 0. The whole prompt is run once (the chunked
        form; no length limit, so a prompt longer than block_size is not cut) and leaves the states; each further
        token is one recurrent step: constant time and memory per token at any length. The states are freed before
        returning. Bad arguments raise ValueError (check_generate_args)."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        if max_new_tokens == 0:
            return idx
        dev = idx.device.type  # under autocast the conv inputs come out in the autocast dtype: keep them in it
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
    # Hugging Face weights (transformers' Mamba2ForCausalLM, mamba_ssm checkpoints): our names are theirs

    @classmethod
    def from_hf_state_dict(cls, sd, config):
        model = cls(config)
        ours = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}  # mamba_ssm's name
        ours.setdefault("lm_head.weight", ours["backbone.embeddings.weight"])  # tied checkpoints may omit lm_head
        model.load_state_dict(ours)
        return model

    def to_hf(self):
        """(config class, config kwargs, model class, state dict) for the same network in transformers."""
        cfg = self.config
        kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
                      state_size=cfg.d_state, conv_kernel=cfg.d_conv, expand=cfg.expand, head_dim=cfg.head_dim,
                      num_heads=cfg.expand * cfg.d_model // cfg.head_dim, n_groups=cfg.n_groups,
                      chunk_size=cfg.chunk_size, time_step_min=cfg.dt_min, time_step_max=cfg.dt_max,
                      time_step_floor=cfg.dt_init_floor, time_step_limit=tuple(cfg.dt_limit),
                      layer_norm_epsilon=cfg.norm_eps, use_bias=False, use_conv_bias=True, residual_in_fp32=True,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        return "Mamba2Config", kwargs, "Mamba2ForCausalLM", dict(self.state_dict())


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
