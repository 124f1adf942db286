"""
Mamba: a language model with no attention at all, a stack of selective state-space (SSM) blocks.

Papers:
- Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv 2312.00752); section
  and equation numbers below refer to it.
- Gu, Goel & Re 2022, "Efficiently Modeling Long Sequences with Structured State Spaces" (S4): the continuous
  system h'(t) = A h(t) + B x(t), y(t) = C h(t), discretised with a step size dt.
- Gu, Gupta, Goel & Re 2022, "On the Parameterization and Initialization of Diagonal State Space Models" (S4D):
  diagonal A, initialised "S4D-Real" as A_n = -(n + 1).
- Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (RMSNorm).
- The authors' code (mamba_ssm) where the paper leaves a detail open (init, dt_rank = ceil(d_model / 16)); the
  parameter names are theirs, so transformers' MambaForCausalLM loads with no renaming (tests/test_mamba.py).

What changed since the previous generation (RetNet, models/retnet.py):
- Retention's fixed per-head decay gamma_h becomes a selective, input-dependent decay exp(dt_t * A): every channel
  of the expanded stream (E = expand * d_model of them) is its own SSM with an N-dim state, and its step size dt_t,
  input matrix B_t and output matrix C_t are computed from the token (section 3.2, Algorithm 2). A token can
  reset the state (large dt) or be skipped (dt ~ 0).
- The decay differs per channel and per state dimension, so there is no T x T "attention" form: training runs a
  chunked scan (linear in T), decoding a one-step recurrence on a fixed (E, N) state per layer.
- No position encoding: a short depthwise causal convolution (width d_conv = 4) before the SSM and the recurrence
  itself see the order of the tokens.
- One homogeneous block instead of attention + FFN: in_proj to (x, z), conv, SSM, output gated by SiLU(z),
  out_proj (Figure 3). The block has ~6 d^2 parameters instead of 12 d^2, so models stack twice as many.
- Kept from RetNet/LLaMA: pre-norm RMSNorm residual stream, tied embeddings, no biases in the projections.

Interface (shared by every file in models/): Config, Model(config), Model.forward(idx, targets=None) -> (logits, loss),
Model.generate(idx, max_new_tokens, temperature, top_k, top_p) with a recurrent state, Model.flops_per_token().

Notation (the paper's, as in mamba-minimal): b batch, l sequence length, d = d_model, E = d_inner = expand * d,
N = d_state, R = dt_rank, K = d_conv.
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
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = upcast(x)
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


# ----------------------------------------------------------------------------------------------------------------
# Position: none. The causal convolution and the recurrence see the order of the tokens, so there is no table
# and no length limit.


# ----------------------------------------------------------------------------------------------------------------
# Mixer: the selective SSM (section 3.2) and the Mamba block around it (section 3.4, Figure 3)
#
# For every channel e and state dimension n, with dt_t > 0 and A < 0 (zero-order hold for A, Euler for B, 3.5.1):
#     h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t          (eq. 2a with A_bar = exp(dt A), B_bar ~ dt B)
#     y_t = C_t . h_t  (sum over n)  + D * x_t                   (eq. 2b plus the skip connection D)
# The decay exp(dt_t * A) is in (0, 1]: a bounded recurrence, but one whose decay depends on (t, e, n). Two forms:
#
# selective_scan (training, prompts): chunks of L ~ sqrt(l) steps.
#   1. Inside every chunk at once, from a zero state: L sequential steps, each one fused multiply-add over
#      (b, chunks, E, N). This materialises the states (b, l, E, N), the least that a form built from PyTorch ops
#      needs when the decay depends on (e, n); the CUDA kernel keeps them in SRAM instead (section 3.3.2).
#   2. Across chunks: l / L sequential steps carry the state from the end of one chunk into the next.
#   3. Each step's state += (decay from its chunk's start) * (state entering the chunk); then y = C . h.
#   So 2 sqrt(l) Python steps (64 at l = 1024, 128 at l = 4096) instead of l. Only exponentials of non-positive
#   numbers are taken (dt * A and its running sum inside a chunk, a sum of same-sign terms, so no cancellation),
#   never a division by a decay: nothing overflows at any length or dt, and a huge dt gives decay 0, the reset
#   the paper describes. Alternatives considered: the T x T "segment-sum" form
#   (Mamba-2's SSD) needs (b, L, L, E, N) tensors here because the decay is per (e, n), L times the states;
#   factoring exp(S_t - S_s) = exp(S_t) * exp(-S_s) overflows once a chunk decays by more than e^88; a log-depth
#   (Blelloch / Hillis-Steele) scan does O(l log l) work on full-size tensors and keeps log l of them for backward.
# selective_step (decoding): the recurrence for one token from the carried state: the same cost at any position.


def selective_scan(x, dt, A, B, C, h0=None):
    """The SSM over a whole sequence (without the D skip).
    x, dt: (b, l, E); A: (E, N); B, C: (b, l, N); h0: (b, E, N) state before the first step, or None for zeros.
    Returns y (b, l, E) and the state after the last step (b, E, N). Everything in at least float32."""
    b, l, E = x.shape
    N = A.shape[1]
    L = math.ceil(math.sqrt(l))  # chunk length: ~sqrt(l) chunks of ~sqrt(l) steps minimises the Python steps
    nc = math.ceil(l / L)
    # Pad the end with dt = 0 (decay 1, input 0): padded steps leave the state as it is, so the last state is right.
    x, dt, B, C = (F.pad(t, (0, 0, 0, nc * L - l)) for t in (x, dt, B, C))
    x, dt = x.reshape(b, nc, L, E), dt.reshape(b, nc, L, E)
    B, C = B.reshape(b, nc, L, 1, N), C.reshape(b, nc, L, 1, N)

    # 1. within chunks, all chunks at once, starting from zero
    dA = torch.exp(dt[..., None] * A)  # (b, nc, L, E, N) discretised A: the decay of one step
    dBx = (dt * x)[..., None] * B  # (b, nc, L, E, N) discretised B times the input
    h = torch.zeros_like(dBx[:, :, 0])  # (b, nc, E, N)
    hs = []
    for dA_t, dBx_t in zip(dA.unbind(2), dBx.unbind(2)):  # unbind, not indexing: its backward is one stack
        h = torch.addcmul(dBx_t, dA_t, h)  # h = dA_t * h + dBx_t, one kernel
        hs.append(h)
    hs = torch.stack(hs, dim=2)  # (b, nc, L, E, N) states as if each chunk started from zero

    # 2. across chunks: the state entering chunk c, from the chunk ends in h and each chunk's total decay
    decay = torch.exp(dt.cumsum(2)[..., None] * A)  # (b, nc, L, E, N) decay from the chunk start to step t
    H = h0 if h0 is not None else torch.zeros_like(h[:, 0])  # (b, E, N)
    H_in = []
    for decay_c, h_c in zip(decay[:, :, -1].unbind(1), h.unbind(1)):
        H_in.append(H)
        H = torch.addcmul(h_c, decay_c, H)  # H = decay of the whole chunk * H + the chunk's own end state
    H_in = torch.stack(H_in, dim=1)  # (b, nc, E, N)

    # 3. true state = own part + carried-in part decayed to step t; read it out with C
    hs = torch.addcmul(hs, decay, H_in[:, :, None])  # (b, nc, L, E, N)
    y = (hs * C).sum(-1)  # (b, nc, L, E); an elementwise sum, not einsum, so autocast keeps it in float32
    return y.view(b, nc * L, E)[:, :l], H


def selective_step(h, x, dt, A, B, C):
    """One step of the recurrence (Algorithm 2 for l = 1): h (b, E, N); x, dt (b, E); B, C (b, N).
    Returns y (b, E) and the new state."""
    h = torch.exp(dt[..., None] * A) * h + (dt * x)[..., None] * B[:, None, :]  # (b, E, N)
    return (h * C[:, None, :]).sum(-1), h


class Mixer(nn.Module):
    """The Mamba block of Figure 3: in_proj -> (x, z); x -> causal conv -> SiLU -> selective SSM; y * SiLU(z) ->
    out_proj. Parameter names and shapes are the reference's."""

    def __init__(self, config):
        super().__init__()
        d, E, N, K = config.d_model, config.expand * config.d_model, config.d_state, config.d_conv
        self.d_inner, self.d_state, self.d_conv = E, N, K
        self.dt_rank = math.ceil(d / 16)  # R: dt is a rank-R projection of x (section 3.6, the reference's "auto")
        self.in_proj = nn.Linear(d, 2 * E, bias=False)  # (x, z) packed on the output dim
        self.conv1d = nn.Conv1d(E, E, K, groups=E, bias=True)  # depthwise; the causal left padding is in causal_conv
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * N, bias=False)  # (dt, B, C) packed: the selection functions
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)  # dt = softplus(dt_proj(.)): the bias is inside softplus
        # S4D-Real: A_n = -(n + 1) for every channel, stored as log(-A) so that A = -exp(A_log) stays negative.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))  # (E, N)
        self.D = nn.Parameter(torch.ones(E))  # skip connection, y += D * x
        self.out_proj = nn.Linear(E, d, bias=False)
        self.recompute = config.recompute_scan and not config.grad_checkpoint  # a checkpointed block recomputes it
        self.conv_state = self.ssm_state = None  # set by Model.setup_cache for generation

        # dt init (section 3.6 / reference): weight ~ U(-R^-1/2, R^-1/2); bias = softplus^-1(dt) with dt log-uniform
        # in [dt_min, dt_max], so at init every channel's step size (its timescale) is spread over that range.
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        log_dt = torch.rand(E) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min)
        dt = torch.exp(log_dt).clamp(min=config.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus(y) = log(1 + e^y)

    def causal_conv(self, x, conv_state):
        """Depthwise causal convolution over time. x (b, E, l); conv_state (b, E, K-1) holds the K-1 inputs before x
        (zeros at the start of a sequence, which is the usual left padding). Returns the output and the new state."""
        x = torch.cat([conv_state.to(x.dtype), x], dim=2) if conv_state is not None else F.pad(x, (self.d_conv - 1, 0))
        return F.conv1d(x, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner), x[:, :, -(self.d_conv - 1):]

    def forward(self, u, start_pos=None):
        """u (b, l, d). start_pos None: training, a whole sequence from a zero state. Otherwise generation: the
        (conv_state, ssm_state) left by the previous call are continued and updated (start_pos itself is not needed)."""
        b, l, _ = u.shape
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (b, l, E) each
        decoding = start_pos is not None
        x, conv_state = self.causal_conv(x.transpose(1, 2), self.conv_state if decoding else None)
        x = F.silu(x).transpose(1, 2)  # (b, l, E)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The SSM runs in at least float32 whatever the autocast dtype (as the reference kernel): long products of
        # decays and sums over thousands of steps. (float64 in a .double() model, so float64 tests are exact.)
        dt = F.softplus(upcast(self.dt_proj(dt)))  # (b, l, E) step sizes, > 0
        A = -torch.exp(upcast(self.A_log))  # (E, N), < 0
        x, B, C = upcast(x), upcast(B), upcast(C)
        h0 = self.ssm_state if decoding else None
        if decoding and l == 1:
            y, h = selective_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
            y = y[:, None]
        elif self.recompute and torch.is_grad_enabled():
            # Section 3.3.2: keep only the scan's inputs and recompute its (b, l, E, N) states in backward.
            y, h = checkpoint(selective_scan, x, dt, A, B, C, h0, use_reentrant=False)
        else:
            y, h = selective_scan(x, dt, A, B, C, h0)
        if decoding:
            self.conv_state, self.ssm_state = conv_state, h
        y = (y + x * upcast(self.D)) * F.silu(upcast(z))  # skip, then the gate (the block's multiplicative branch)
        return self.out_proj(y.to(u.dtype))


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward: none. The gated mixer (expand = 2, SiLU(z) gate) is the block's MLP as well (Figure 3 merges the
# H3 block and the gated MLP into one).


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
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 (mamba-130m pads its 50277 to 50280)
    n_layer: int = 24
    d_model: int = 768  # mamba-130m: 24 layers x 768, about twice as deep as a 12 x 768 Transformer of that size
    d_state: int = 16  # N, the SSM state per channel
    d_conv: int = 4  # K, width of the causal depthwise convolution
    expand: int = 2  # E = expand * d_model channels inside the block
    dt_min: float = 0.001  # range of the initial step sizes
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    norm_eps: float = 1e-5
    recompute_scan: bool = False  # recompute the scan's states in backward: ~4 b*l*E*N floats less per layer kept
    grad_checkpoint: bool = False  # recompute whole blocks in backward (the scan included): keeps only their inputs


# ----------------------------------------------------------------------------------------------------------------
# Model


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        if config.d_conv < 2:
            raise ValueError(f"d_conv ({config.d_conv}) must be >= 2: the convolution carries d_conv - 1 past inputs")
        if not 0 < config.dt_min <= config.dt_max:
            raise ValueError(f"need 0 < dt_min ({config.dt_min}) <= dt_max ({config.dt_max})")
        if min(config.d_model, config.d_state, config.expand, config.n_layer) < 1:
            raise ValueError("d_model, d_state, expand and n_layer must all be >= 1")
        self.config = config
        self.backbone = nn.ModuleDict(dict(
            embeddings=nn.Embedding(config.vocab_size, config.d_model),
            layers=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            norm_f=RMSNorm(config.d_model, config.norm_eps),
        ))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.backbone.embeddings.weight = self.lm_head.weight  # tied, as the reference

        # Init follows the reference, not GPT-2's 0.02 everywhere: embedding N(0, 0.02); in_proj, x_proj and conv1d
        # keep PyTorch's default (uniform +-1/sqrt(fan_in), std ~0.02 at d = 768); dt_proj, A_log and D as in Mixer;
        # out_proj, which writes into the residual stream, scaled by 1/sqrt(n_layer) (GPT-2's rule, one residual
        # addition per layer).
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)
        with torch.no_grad():
            for block in self.backbone.layers:
                block.mixer.out_proj.weight.div_(math.sqrt(config.n_layer))
        # The reference excludes A_log and D from weight decay; this flag says so to an optimizer that looks for it.
        for block in self.backbone.layers:
            block.mixer.A_log._no_weight_decay = block.mixer.D._no_weight_decay = True

    def forward(self, idx, targets=None, start_pos=None):
        """start_pos: None for training (each sequence from a zero state); an int for generation, where idx
        continues a sequence of start_pos tokens summarised by the per-layer states (setup_cache)."""
        x = self.backbone.embeddings(idx)  # (B, T, C); no position embedding
        ckpt = self.config.grad_checkpoint and self.training and start_pos is None  # decoding has no backward
        for block in self.backbone.layers:
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x, start_pos)
        x = self.backbone.norm_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count. There is no position table to leave out, and the token embedding is tied to lm_head,
        which does matmul work, so it is counted either way."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward) = 6N + 3 * (the scan's forward FLOPs per token).
        The conv and all projections are parameter multiply-adds, inside 6N. The selective scan does about 7 E N
        FLOPs per token per layer in the forward: dt * A and its exp, dt x * B, the state update (multiply, add),
        C * h and the sum over N. So 6N + 21 * n_layer * E * N (independent of the sequence length)."""
        cfg = self.config
        return 6 * self.num_params() + 21 * cfg.n_layer * cfg.expand * cfg.d_model * cfg.d_state

    # ------------------------------------------------------------------------------------------------------------
    # Generate

    def setup_cache(self, batch_size, device, dtype):
        """Zero states per layer: the last K-1 conv inputs (B, E, K-1), which are inputs, not a recurrence, in the
        compute dtype; and the SSM state (B, E, N), a long decayed sum, in promote_types(weight dtype, float32).
        This is all a Mamba layer remembers, however long the sequence."""
        sdt = torch.promote_types(self.lm_head.weight.dtype, torch.float32)
        for block in self.backbone.layers:
            m = block.mixer
            m.conv_state = torch.zeros(batch_size, m.d_inner, m.d_conv - 1, device=device, dtype=dtype)
            m.ssm_state = torch.zeros(batch_size, m.d_inner, m.d_state, device=device, dtype=sdt)

    def free_cache(self):
        for block in self.backbone.layers:
            block.mixer.conv_state = block.mixer.ssm_state = None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens; greedy at temperature 0. The whole prompt is run once (chunked scan;
        no length limit, so a prompt longer than block_size is not cut) and leaves the states; each further token
        is one recurrent step: constant time and memory per token at any length. The states are freed before
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
    # Hugging Face weights (transformers' MambaForCausalLM): our names are its names, so this is nearly a no-op

    @classmethod
    def from_hf_state_dict(cls, sd, config):
        model = cls(config)
        ours = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}  # older name
        ours.setdefault("lm_head.weight", ours["backbone.embeddings.weight"])  # tied checkpoints may omit lm_head
        model.load_state_dict(ours)
        return model

    def to_hf(self):
        """(config class, config kwargs, model class, state dict) for the same network in transformers."""
        cfg = self.config
        kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
                      state_size=cfg.d_state, conv_kernel=cfg.d_conv, expand=cfg.expand,
                      time_step_rank=math.ceil(cfg.d_model / 16), time_step_min=cfg.dt_min, time_step_max=cfg.dt_max,
                      time_step_floor=cfg.dt_init_floor, layer_norm_epsilon=cfg.norm_eps, use_bias=False,
                      use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
        return "MambaConfig", kwargs, "MambaForCausalLM", dict(self.state_dict())


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def check_generate_args(idx, max_new_tokens, temperature, top_k, top_p):
    """Raise ValueError, naming the argument, before any work is done."""
    if idx.size(1) == 0:
        raise ValueError("idx is an empty prompt: generate needs at least one token to condition on")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature ({temperature}) must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k ({top_k}) must be None or an int >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p ({top_p}) must be None or in (0, 1]")


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
