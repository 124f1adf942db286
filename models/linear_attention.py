"""
Linear attention: GPT-2 with softmax attention replaced by causal linear attention, which is an RNN.

Paper:
- Katharopoulos, Vyas, Pappas & Fleuret 2020, "Transformers are RNNs: Fast Autoregressive Transformers with Linear
  Attention" (ICML 2020, arXiv 2006.16236); section numbers below refer to it.

What changed since the previous generation (GPT-2, models/gpt2.py):
- No softmax. The similarity of a query and a key is a dot product of positive features, phi(q) . phi(k) with
  phi(x) = elu(x) + 1 (section 3.2.1), and an output is the similarity-weighted mean of the values (3.2). Because the
  similarity factorises, (phi(Q) phi(K)^T) V = phi(Q) (phi(K)^T V) (3.2): causal attention becomes a running sum.
- No KV cache: a state of fixed size. Per head S_i = sum_{j<=i} phi(k_j) v_j^T (hs x hs) and Z_i = sum_{j<=i}
  phi(k_j) (hs), and y_i = phi(q_i)^T S_i / phi(q_i)^T Z_i (3.3): O(1) time and memory per decoded token,
  whatever the context length (section 3.4: the Transformer as an RNN).
- Three forms of one function, which the tests hold equal: quadratic (3.3, masked T x T like softmax attention),
  chunked (masked matmuls inside chunks of `chunk_size`, the running state across them: linear in T; training and
  prompts) and recurrent (3.4, one token at a time; decoding).
- Everything else is GPT-2's: learned positions, pre-LN, GELU MLP, tied head, the same init and the same parameter
  names, so a GPT-2 checkpoint loads by name (`--init_from`). Learned positions keep attention the one change from
  GPT-2; the price is GPT-2's bounded context: the state itself has no length limit, the position table does.
  Generation therefore follows the contract of a bounded model (the last block_size prompt tokens, a refill from the
  last block_size // 2 tokens when the context is full), each new token O(1).

What the next generation changes (RetNet, models/retnet.py): a fixed decay gamma_h < 1 per head multiplies the state
each step, so old tokens fade instead of adding up forever; phi is dropped (q and k are rotated xPos-style instead),
and the division by phi(q)^T Z is replaced by a per-head GroupNorm of the output, plus a swish gate.

Numerics: phi(q)^T Z_t is a sum of t positive terms, so it grows with the position. Under bf16 autocast the
numerator's matmuls run in bf16 (each output rounded once), but the normaliser Z and the division are computed in
float32, and the recurrent state (S, Z) is kept in at least float32 whatever the compute dtype, per the README's
generation contract: a bf16 running sum stops growing once its terms fall below its resolution.

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


def layer_norm(n_embd, bias):
    # GPT-2's LayerNorm, unchanged.
    return nn.LayerNorm(n_embd, eps=1e-5, bias=bias)


def upcast(x):
    """x in at least float32: bf16/fp16 -> float32, float64 stays float64 (so a .double() model is exact)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# ----------------------------------------------------------------------------------------------------------------
# Attention: three forms of y_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / (sum_{j<=i} phi(q_i).phi(k_j) + eps)
#
# q, k are already mapped by phi: (B, nh, T, hs) and positive; v: (B, nh, T, hs). eps (fast-transformers' 1e-6) only
# guards a denominator that underflows: phi > 0 makes it positive. Every form adds it at the same place, so they
# agree for any eps. The forms return y in at least float32: (B, nh, T, hs).


def phi(x):
    """The feature map of section 3.2.1: elu(x) + 1, positive everywhere (so similarities and the normaliser
    are too), the identity plus one for x > 0 and a smooth exp(x) below. phi(0) = 1, not 0: pad after phi."""
    return F.elu(x) + 1


def attention_quadratic(q, k, v, eps):
    """Eq. 8: (phi(Q) phi(K)^T ⊙ M) V, each row divided by its sum (phi(Q) phi(K)^T ⊙ M) 1. O(T^2) time and memory,
    exactly the shape of softmax attention with exp(q.k / sqrt(d)) replaced by phi(q).phi(k)."""
    T = q.size(2)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # M: j <= i
    A = (q @ k.transpose(-2, -1)).masked_fill(~mask, 0.0)  # (B, nh, T, T), A_ij = phi(q_i).phi(k_j)
    den = upcast(A).sum(-1, keepdim=True)  # (B, nh, T, 1): the row sums, in float32 under autocast
    return upcast(A @ v) / (den + eps)


def attention_chunked(q, k, v, chunk_size, eps, S=None, z=None):
    """The same function, linear in T. Split T into N chunks of C tokens; chunk n sees its own tokens through a C x C
    masked matmul (as the quadratic form) and every earlier chunk through the state S_(n-1) (section 3.3's S at the chunk's
    start):  Y_[n] = (phi(Q_[n]) phi(K_[n])^T ⊙ M) V_[n]  +  phi(Q_[n]) S_(n-1),  S_n = S_(n-1) + phi(K_[n])^T V_[n].
    Without a decay the states are a prefix sum over chunks (one cumsum, no loop; RetNet's decayed state needs one).
    Keeping a state per chunk, not per token, is what makes this trainable: autograd through that recurrence per token would
    store T states of hs x hs (section 3.3.1 derives the gradients by hand for that reason).
    The normaliser is section 3.3's Z per token: Z_t = z + cumsum_j phi(k_j), a float32 (B, nh, T, hs) cumsum, then
    phi(q_t).Z_t. S, z: an optional state from earlier tokens (generation). Returns (y, S_T, Z_T), the state after
    the last token in at least float32. T not divisible by C: zero-padded after phi, so the padding adds nothing."""
    B, nh, T, hs = q.shape
    C = min(chunk_size, T)
    N = -(-T // C)  # number of chunks, rounded up
    pad = N * C - T
    qc, kc, vc = (F.pad(t, (0, 0, 0, pad)).view(B, nh, N, C, hs) for t in (q, k, v))  # (B, nh, N, C, hs)

    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    inner = (qc @ kc.transpose(-2, -1)).masked_fill(~mask, 0.0) @ vc  # (B, nh, N, C, hs): inside each chunk

    # The states sum over the whole sequence: at least float32, even when the matmuls run in bf16.
    sdt = torch.promote_types(q.dtype, torch.float32)
    S0 = torch.zeros(B, nh, hs, hs, device=q.device, dtype=sdt) if S is None else S.to(sdt)
    z0 = torch.zeros(B, nh, hs, device=q.device, dtype=sdt) if z is None else z.to(sdt)
    kv = upcast(kc.transpose(-2, -1) @ vc)  # (B, nh, N, hs, hs): phi(K_[n])^T V_[n], each chunk's addition to S
    S_after = S0[:, :, None] + kv.cumsum(2)  # (B, nh, N, hs, hs): S_n, the state after chunk n
    S_before = torch.cat((S0[:, :, None], S_after[:, :, :-1]), dim=2)  # S_(n-1): what chunk n sees
    cross = qc @ S_before.to(qc.dtype)  # (B, nh, N, C, hs): from every earlier chunk
    num = (upcast(inner) + upcast(cross)).view(B, nh, N * C, hs)[:, :, :T]  # (B, nh, T, hs)

    Z = z0[:, :, None] + upcast(k).cumsum(2)  # (B, nh, T, hs): Z at every position
    den = (upcast(q) * Z).sum(-1, keepdim=True)  # (B, nh, T, 1): phi(q_t)^T Z_t
    return num / (den + eps), S_after[:, :, -1], Z[:, :, -1]


def attention_recurrent(q, k, v, eps, S, z):
    """Section 3.4: one token at a time, s_i = s_(i-1) + phi(k_i) v_i^T, z_i = z_(i-1) + phi(k_i),
    y_i = phi(q_i)^T s_i / (phi(q_i)^T z_i + eps). S (B, nh, hs, hs) and z (B, nh, hs) summarise every earlier
    token: O(1) per token, no KV cache. All in the state's dtype (>= float32); the products are elementwise, which
    autocast does not lower to bf16. Returns (y, S, z)."""
    q, k, v = q.to(S.dtype), k.to(S.dtype), v.to(S.dtype)
    out = []
    for t in range(q.size(2)):
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, nh, hs, hs): add phi(k_t) v_t^T
        z = z + k[:, :, t]  # (B, nh, hs)
        num = (q[:, :, t, :, None] * S).sum(-2)  # (B, nh, hs): phi(q_t)^T S_t
        den = (q[:, :, t] * z).sum(-1, keepdim=True)  # (B, nh, 1): phi(q_t)^T z_t
        out.append(num / (den + eps))
    return torch.stack(out, dim=2), S, z  # (B, nh, T, hs)


class CausalLinearAttention(nn.Module):
    """GPT-2's attention block (packed q, k, v, an output projection) with linear attention inside."""

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v packed
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)  # no attention dropout: there are no probabilities to drop
        self.form = config.form
        self.chunk_size = config.chunk_size
        self.eps = config.eps
        self.S = self.z = None  # (B, nh, hs, hs) and (B, nh, hs), >= float32: set by Model.setup_cache

    def forward(self, x, start_pos=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = phi(q.view(B, T, self.n_head, self.head_dim).transpose(1, 2))  # (B, nh, T, hs), positive
        k = phi(k.view(B, T, self.n_head, self.head_dim).transpose(1, 2))  # (B, nh, T, hs), positive
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        # No 1/sqrt(hs) scale: the division by the row sum makes the weights sum to one whatever their scale.

        if start_pos is None:  # training / full forward: the config's form
            if self.form == "quadratic":
                y = attention_quadratic(q, k, v, self.eps)
            else:
                y, _, _ = attention_chunked(q, k, v, self.chunk_size, self.eps)
        else:  # generation: continue from the state
            if self.S is None:
                raise ValueError("call Model.setup_cache(batch_size, device, dtype) before forward(start_pos=...)")
            # start_pos 0 begins a sequence (a prompt, or the refill in generate): the state restarts from zero,
            # as a KV cache is overwritten from position 0.
            S, z = (torch.zeros_like(self.S), torch.zeros_like(self.z)) if start_pos == 0 else (self.S, self.z)
            if T == 1:  # one new token: the recurrent form
                y, S, z = attention_recurrent(q, k, v, self.eps, S, z)
            else:  # a prompt: chunked from the state, which also returns the state after it
                y, S, z = attention_chunked(q, k, v, self.chunk_size, self.eps, S, z)
            self.S, self.z = S.to(self.S.dtype), z.to(self.z.dtype)

        y = y.type_as(v).transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward


class MLP(nn.Module):
    """GPT-2's MLP, unchanged: 4x wide, tanh-approximated GELU."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


# ----------------------------------------------------------------------------------------------------------------
# Block


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = layer_norm(config.n_embd, config.bias)
        self.attn = CausalLinearAttention(config)
        self.ln_2 = layer_norm(config.n_embd, config.bias)
        self.mlp = MLP(config)

    def forward(self, x, start_pos=None):
        x = x + self.attn(self.ln_1(x), start_pos)  # pre-LN residual, as GPT-2
        x = x + self.mlp(self.ln_2(x))
        return x


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    block_size: int = 1024  # the longest context the learned position table covers
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    form: str = "chunked"  # training form: 'chunked' (linear in T) or 'quadratic' (section 3.3's masked form, O(T^2))
    chunk_size: int = 64  # chunk length of the chunked form (training and prompts)
    eps: float = 1e-6  # added to the normaliser phi(q)^T Z (fast-transformers' value)
    grad_checkpoint: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute


# ----------------------------------------------------------------------------------------------------------------
# Model


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
        if config.form not in ("chunked", "quadratic"):
            raise ValueError(f"form ({config.form!r}) must be 'chunked' or 'quadratic'")
        if config.chunk_size < 1:
            raise ValueError(f"chunk_size ({config.chunk_size}) must be >= 1")
        if config.eps < 0:
            raise ValueError(f"eps ({config.eps}) must be >= 0 (it is added to a positive normaliser)")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=layer_norm(config.n_embd, config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as GPT-2

        # GPT-2's init: std 0.02, residual projections 0.02 / sqrt(2 * n_layer).
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, start_pos=None):
        """start_pos: None for training (the config's form over the whole sequence); an int for generation, where
        idx continues a sequence of start_pos tokens summarised by the state (setup_cache)."""
        B, T = idx.size()
        pos0 = 0 if start_pos is None else start_pos
        if pos0 + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos0 + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(pos0, pos0 + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        ckpt = self.config.grad_checkpoint and self.training and start_pos is None  # decoding has no backward
        for block in self.transformer.h:
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x, start_pos)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count; position embeddings are not counted by default (they do no matmul work). The token
        embedding is counted: it is tied to lm_head, which does. The same count as GPT-2 at the same shape."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward) = 6N + 3 * attention's forward FLOPs beyond the parameter
        matmuls, per layer, with d = n_embd, hs = head dim, T = block_size (PaLM appendix B; the causal half is
        not subtracted, the normaliser's 2d is ignored):
          quadratic: phi(q).phi(k) and A V over T keys: 4 T d                        -> 6N + 12 L d T (GPT-2's)
          chunked:   the same over C = min(chunk_size, T) keys, plus phi(k) v^T into the state and phi(q)^T S,
                     2 d hs each: 4 C d + 4 d hs                                     -> 6N + 12 L d (C + hs)"""
        cfg = self.config
        L, d, T = cfg.n_layer, cfg.n_embd, cfg.block_size
        if cfg.form == "chunked":
            return 6 * self.num_params() + 12 * L * d * (min(cfg.chunk_size, T) + d // cfg.n_head)
        return 6 * self.num_params() + 12 * L * d * T

    # ------------------------------------------------------------------------------------------------------------
    # Generate

    def setup_cache(self, batch_size, device, dtype):
        """A zero state per layer: S (B, nh, hs, hs) and z (B, nh, hs). Not a KV cache, so not the compute dtype:
        running sums, in promote_types(weight dtype, float32) (float32, or float64 for a .double() model)."""
        sdt = torch.promote_types(self.lm_head.weight.dtype, torch.float32)
        for block in self.transformer.h:
            a = block.attn
            a.S = torch.zeros(batch_size, a.n_head, a.head_dim, a.head_dim, device=device, dtype=sdt)
            a.z = torch.zeros(batch_size, a.n_head, a.head_dim, device=device, dtype=sdt)

    def free_cache(self):
        for block in self.transformer.h:
            block.attn.S = block.attn.z = None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens; greedy at temperature 0. The prompt is run once (chunked) and leaves
        one state per head per layer; each further token is one recurrent step, O(1) in the context length.
        Learned positions end at block_size: a longer prompt is read from its last block_size tokens, and when the
        positions run out the state restarts from the most recent block_size // 2 tokens (a chunked prefill once per
        block_size // 2 new tokens: constant amortised cost). The state is freed before returning. Bad arguments
        raise ValueError (check_generate_args)."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        if max_new_tokens == 0:
            return idx
        dev = idx.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.lm_head.weight.dtype
        self.setup_cache(idx.size(0), idx.device, dtype)
        keep = self.config.block_size // 2
        context = idx[:, -self.config.block_size:]  # the whole prompt if it fits
        logits, _ = self(context, start_pos=0)
        pos = context.size(1)
        for i in range(max_new_tokens):
            idx_next = sample_next(logits[:, -1, :], temperature, top_k, top_p)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            if i == max_new_tokens - 1:
                break
            if pos == self.config.block_size:  # out of positions: restart from the most recent half
                logits, _ = self(idx[:, -keep:], start_pos=0)
                pos = keep
            else:
                logits, _ = self(idx_next, start_pos=pos)
                pos += 1
        self.free_cache()
        return idx


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
