"""
GPT-2: a decoder-only Transformer language model.

Papers:
- Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training" (GPT-1)
- Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2)

What changed since the previous generation (the 2017 encoder-decoder Transformer, models/transformer.py):
- The encoder and cross-attention are gone: one stack of causal self-attention blocks predicts the next token.
- Learned position embeddings instead of fixed sinusoids.
- Pre-LN: LayerNorm moves to the input of each sub-block, plus one final LayerNorm (trains deeper stacks stably).
- GELU instead of ReLU in the MLP (the tanh approximation, as the original TensorFlow code and HF use).
- Residual projections initialised with std 0.02 / sqrt(2 * n_layer) so the residual stream does not grow with depth.
- Input and output embeddings tied (as in 2017), but without the sqrt(d_model) scaling.

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


def layer_norm(n_embd, bias):
    # GPT-2 uses LayerNorm with a bias; `bias=False` is the cheaper variant nanoGPT offers.
    return nn.LayerNorm(n_embd, eps=1e-5, bias=bias)


# ----------------------------------------------------------------------------------------------------------------
# Attention


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v packed
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)  # SDPA's dropout_p; a module so schedules set it
        self.resid_dropout = nn.Dropout(config.dropout)
        self.cache_k = self.cache_v = None  # set by Model.setup_cache for generation

    def forward(self, x, start_pos=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

        if start_pos is None:  # training / full forward: flash attention on CUDA via SDPA
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.attn_dropout.p if self.training else 0.0)
        else:  # generation: append to the cache, attend over everything cached so far
            end = start_pos + T
            self.cache_k[:B, :, start_pos:end] = k
            self.cache_v[:B, :, start_pos:end] = v
            k, v = self.cache_k[:B, :, :end], self.cache_v[:B, :, :end]
            # A single new query may see the whole cache, so no mask: `is_causal=True` would align the causal
            # triangle to the top-left and let it see only the first key. A multi-token chunk needs an explicit mask.
            mask = None
            if T > 1:
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward


class MLP(nn.Module):
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
        self.attn = CausalSelfAttention(config)
        self.ln_2 = layer_norm(config.n_embd, config.bias)
        self.mlp = MLP(config)

    def forward(self, x, start_pos=None):
        x = x + self.attn(self.ln_1(x), start_pos)  # pre-LN residual
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
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is slightly faster and no worse
    grad_checkpoint: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute


# ----------------------------------------------------------------------------------------------------------------
# Model


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=layer_norm(config.n_embd, config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the output layer reuses the token embedding, saving V*C parameters.
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2 paper: scale the init of residual projections by 1/sqrt(N), N = number of residual additions.
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
        """Parameter count; position embeddings are not counted by default (they do no matmul work).
        The token embedding is counted: it is tied to lm_head, which does."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 * L * C * T."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    # ------------------------------------------------------------------------------------------------------------
    # Generate

    def setup_cache(self, batch_size, device, dtype):
        """Allocate a KV cache of block_size positions per layer (dtype = the compute dtype)."""
        shape = (batch_size, self.config.n_head, self.config.block_size, self.config.n_embd // self.config.n_head)
        for block in self.transformer.h:
            block.attn.cache_k = torch.zeros(shape, device=device, dtype=dtype)
            block.attn.cache_v = torch.zeros(shape, device=device, dtype=dtype)

    def free_cache(self):
        for block in self.transformer.h:
            block.attn.cache_k = block.attn.cache_v = None

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens; greedy at temperature 0. The prompt is run once to fill the KV cache,
        then each step feeds only the newest token. Learned positions end at block_size: a longer prompt is
        prefilled with its last block_size tokens; when the cache fills during generation we refill it once from
        the most recent block_size // 2 tokens, so the amortised cost per token stays constant. The cache is freed
        before returning. Bad arguments raise ValueError (check_generate_args)."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        if max_new_tokens == 0:
            return idx
        dev = idx.device.type  # under autocast k/v come out in the autocast dtype: cache them in it
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
            if pos == self.config.block_size:  # cache full: refill from the most recent half of the context
                logits, _ = self(idx[:, -keep:], start_pos=0)
                pos = keep
            else:
                logits, _ = self(idx_next, start_pos=pos)
                pos += 1
        self.free_cache()
        return idx

    # ------------------------------------------------------------------------------------------------------------
    # Hugging Face weights (transformers' GPT2LMHeadModel): pure tensor renaming, no transformers import here

    # HF's Conv1D stores weights as (in, out); nn.Linear wants (out, in).
    _conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_hf_state_dict(cls, sd, config):
        model = cls(config)
        ours = {}
        for k, v in sd.items():
            if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
                continue  # causal-mask buffers in older HF checkpoints
            ours[k] = v.t() if k.endswith(cls._conv1d) else v
        model.load_state_dict(ours)
        return model

    def to_hf(self):
        """(config class, config kwargs, model class, state dict) for the same network in transformers."""
        cfg = self.config
        kwargs = dict(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                      activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
        if not cfg.bias:
            raise ValueError("transformers' GPT-2 always has biases; set bias=True to compare against it")
        sd = {k: (v.t() if k.endswith(self._conv1d) else v) for k, v in self.state_dict().items()}
        return "GPT2Config", kwargs, "GPT2LMHeadModel", sd


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
