"""
T5: the Text-to-Text Transfer Transformer, an encoder-decoder with relative position biases.

Papers (section numbers below refer to the first):
- Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer" (JMLR)
- Shaw et al. 2018, "Self-Attention with Relative Position Representations" (what T5's position bias simplifies)
- Shazeer 2020, "GLU Variants Improve Transformer" (the gated-GELU feed-forward of T5 v1.1)

What changed since the 2017 Transformer (models/transformer.py), section 2.1 unless noted:
- Pre-norm residuals x + Sublayer(Norm(x)) and a final norm per stack (as GPT-2); the norm only rescales: no mean
  subtraction, no bias (the RMSNorm LLaMA later adopted). No bias in any linear layer either.
- No position embeddings: a learned scalar per (relative-distance bucket, head) added to the attention logits,
  exact for short distances, logarithmic up to 128; bidirectional in the encoder, causal in the decoder, none in
  cross-attention; one table per stack, computed once and shared by its layers.
- q.k is not divided by sqrt(d_kv): the initialisation of W^Q (std (d_model d_kv)^-0.5) absorbs it.
- v1.0 ties input and output embeddings (as 2017) but, instead of multiplying the embeddings by sqrt(d_model),
  scales the decoder output by d_model^-0.5 before the output layer; v1.1 unties them and drops the rescale.
- FFN: v1.0 ReLU(x W_i) W_o; v1.1 the gated GELU (GELU(x W_0) * x W_1) W_o of Shazeer 2020.
- Pre-training by span corruption (section 3.3.4): 15% of the tokens, in spans of mean length 3, each span replaced
  by one sentinel in the encoder input; the decoder outputs the spans, each after its sentinel. (Adafactor and the
  inverse-square-root schedule are training settings, not in this file.)
Since GPT-2 (models/gpt2.py): the encoder and cross-attention are back and relative positions replace the table.
Defaults: v1.1 small (d_model 512, 6 x 64 heads, d_ff 1024, 8 + 8 layers); v1.0: relu, tied, dropout 0.1 (Config).

Objectives (Config.objective), and what the loss covers:
- "prefix" (prefix LM, section 3.3.1) on the positions of models/transformer.py: the encoder reads idx[:, :S]
  (S = src_len), the decoder idx[:, S-1:] causally; logits (B, T - S + 1, V) align with targets[:, S-1:] (-1 ignored).
- "span": forward(idx, targets) corrupts idx itself (targets only ask for a loss; without them forward reads
  "prefix"). Sentinel i = vocab_size + i, vocab_size + n_spans closes the target (<Z>, figure 2), vocab_size +
  n_spans + 1 starts the decoder; the loss covers all n_noise + n_spans + 1 targets. Training draws a new mask per
  call; eval mode uses one seeded mask so every evaluation scores the same positions.

Interface (every file in models/): Config, Model(config), forward(idx, targets) -> (logits, loss), generate(idx,
max_new_tokens, temperature, top_k, top_p), flops_per_token(); twin T5ForConditionalGeneration (from_hf_state_dict,
to_hf, hf_inputs).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------------------------
# Layers: the norm, relative position buckets (section 2.1), attention, the feed-forward and the pre-norm blocks


class T5LayerNorm(nn.Module):
    """y = g * x / sqrt(mean(x^2) + eps), no mean subtraction, no bias; the mean square in float32 or wider."""

    def __init__(self, d_model, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d_model)), eps

    def forward(self, x):
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """key - query position -> bucket in [0, num_buckets): half per direction in the encoder, keys after the query
    in bucket 0 (masked) in the decoder; per half, short distances exact, then logarithmic up to max_distance."""
    if bidirectional:
        num_buckets //= 2
        buckets, distance = (relative_position > 0).long() * num_buckets, relative_position.abs()
    else:
        buckets, distance = torch.zeros_like(relative_position), (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # float32, as the reference computes it, so the bucket edges agree exactly
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    far = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, far)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to q.k: one table per stack, shared by its layers."""

    def __init__(self, config, bidirectional):
        super().__init__()
        self.relative_attention_bias = nn.Embedding(config.num_buckets, config.n_head)
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, config.num_buckets, config.max_distance

    def forward(self, q_len, k_len, start_pos=0):
        """Bias (1, h, q_len, k_len), queries at start_pos.. and keys at 0..; causal: -inf on keys after the query."""
        device = self.relative_attention_bias.weight.device
        query = torch.arange(start_pos, start_pos + q_len, device=device)[:, None]
        rel = torch.arange(k_len, device=device)[None, :] - query  # (q_len, k_len)
        bucket = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        bias = self.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)  # (1, h, q_len, k_len)
        return bias if self.bidirectional or q_len <= 1 else bias.masked_fill(rel > 0, float("-inf"))


class Attention(nn.Module):
    """softmax(Q K^T + bias) V, n_head heads of d_kv: no 1/sqrt(d_kv), no biases; packed q | k | v (cross: q, k | v)."""

    def __init__(self, config, cross=False):
        super().__init__()
        self.n_head, self.d_kv, self.cross = config.n_head, config.d_kv, cross
        inner = config.n_head * config.d_kv
        if cross:
            self.q, self.kv = (nn.Linear(config.d_model, n * inner, bias=False) for n in (1, 2))
        else:
            self.qkv = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.attn_dropout = nn.Dropout(config.dropout)  # on the attention weights, as T5: SDPA's dropout_p
        self.cache_k = self.cache_v = self.memory_k = self.memory_v = None  # generation: setup_cache, cache_memory

    def heads(self, x, n):
        return x.view(x.size(0), x.size(1), n, self.n_head, self.d_kv).permute(2, 0, 3, 1, 4)  # n x (B, h, T, d_kv)

    def forward(self, x, bias=None, memory=None, start_pos=None):
        """x (B, T, C); self: bias (1, h, T, T_k), start_pos appends to the cache; cross: memory or cache_memory's."""
        B, T, _ = x.size()
        if self.cross:
            q = self.heads(self.q(x), 1)[0]
            k, v = self.heads(self.kv(memory), 2) if memory is not None else (self.memory_k, self.memory_v)
        else:
            q, k, v = self.heads(self.qkv(x), 3)  # (B, h, T, d_kv) each
            if start_pos is not None:  # generation: append to the cache, attend over everything cached so far
                end = start_pos + T
                self.cache_k[:B, :, start_pos:end], self.cache_v[:B, :, start_pos:end] = k, v
                k, v = self.cache_k[:B, :, :end], self.cache_v[:B, :, :end]
        bias = None if bias is None else bias.to(q.dtype)  # the bias table is float32 under autocast
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0,
                                           dropout_p=self.attn_dropout.p if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.d_kv))  # (B, T, C)

    def cache_memory(self, memory):
        """Project the encoder output to keys/values once per source (generation); memory None frees them."""
        self.memory_k, self.memory_v = (None, None) if memory is None else self.heads(self.kv(memory), 2)


class FeedForward(nn.Module):
    """'gated-gelu': (GELU(x W_0) * x W_1) W_o (tanh GELU; W_0 | W_1 one matrix); 'relu': ReLU(x W_i) W_o."""

    def __init__(self, config):
        super().__init__()
        self.gated = config.activation == "gated-gelu"
        self.wi = nn.Linear(config.d_model, (2 if self.gated else 1) * config.d_ff, bias=False)
        self.wo, self.drop = nn.Linear(config.d_ff, config.d_model, bias=False), nn.Dropout(config.dropout)

    def forward(self, x):
        if self.gated:
            gate, up = self.wi(x).chunk(2, dim=-1)
            return self.wo(self.drop(F.gelu(gate, approximate="tanh") * up))
        return self.wo(self.drop(F.relu(self.wi(x))))


class Block(nn.Module):
    """A layer of either stack, pre-norm x + Dropout(Sublayer(Norm(x))): self-attention, cross-attention, FFN."""

    def __init__(self, config, cross=False):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.ln_1, self.self_attn = T5LayerNorm(d, eps), Attention(config)
        if cross:
            self.ln_2, self.cross_attn = T5LayerNorm(d, eps), Attention(config, cross=True)
        setattr(self, "ln_3" if cross else "ln_2", T5LayerNorm(d, eps))  # the FFN's: norms numbered in order
        self.ffn, self.drop, self.cross = FeedForward(config), nn.Dropout(config.dropout), cross

    def forward(self, x, bias, memory=None, start_pos=None):
        x = x + self.drop(self.self_attn(self.ln_1(x), bias, start_pos=start_pos))  # (B, T, C)
        if self.cross:
            x = x + self.drop(self.cross_attn(self.ln_2(x), memory=memory))
        return x + self.drop(self.ffn(self.ln_3(x) if self.cross else self.ln_2(x)))


# ----------------------------------------------------------------------------------------------------------------
# Config and model


@dataclass
class Config:
    block_size: int = 1024  # longest block: src_len source tokens, then the decoder reads block_size - src_len + 1
    vocab_size: int = 50304  # the text's vocabulary; objective 'span' adds its sentinel rows after it
    src_len: int = 512  # objective 'prefix': the first src_len tokens of a block are the source; < block_size
    d_model: int = 512
    n_head: int = 6
    d_kv: int = 64  # per-head size; n_head * d_kv need not equal d_model in T5
    d_ff: int = 1024
    n_encoder_layer: int = 8
    n_decoder_layer: int = 8
    num_buckets: int = 32  # relative position buckets (per direction: half of them in the encoder)
    max_distance: int = 128  # distances from here on share the last bucket
    activation: str = "gated-gelu"  # v1.1; 'relu' for v1.0
    tie_word_embeddings: bool = False  # v1.1 unties; True (v1.0): shared output layer, decoder output * d_model^-0.5
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0  # v1.1 pre-training; v1.0 used 0.1
    objective: str = "prefix"  # 'prefix' (prefix LM, same positions as models/transformer.py) or 'span' corruption
    noise_density: float = 0.15  # 'span': fraction of tokens dropped (section 3.3.4)
    mean_span_length: float = 3.0  # 'span': mean length of a dropped span
    span_seed: int = 1234  # 'span': the seed of the one mask used in eval mode
    grad_checkpoint: bool = False  # recompute each layer's activations in backward: less memory, ~1/3 more compute


def span_counts(T, noise_density, mean_span_length):
    """(noise tokens, spans) in a sequence of T, rounded as T5's random_spans_noise_mask does."""
    n_noise = min(max(round(T * noise_density), 1), T - 1)
    return n_noise, max(round(n_noise / mean_span_length), 1)


def random_segmentation(n_items, n_segments, batch_size, generator):
    """(B, n_segments) lengths >= 1 summing to n_items, all equally likely (T5's _random_segmentation, no loop)."""
    cuts = torch.rand(batch_size, n_items - 1, generator=generator).argsort(dim=1)[:, :n_segments - 1]
    edges = F.pad(cuts.sort(dim=1).values + 1, (1, 0), value=0)
    return torch.diff(F.pad(edges, (0, 1), value=n_items), dim=1)


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        c, S, T = config, config.src_len, config.block_size
        n_noise, n_spans = span_counts(T, c.noise_density, c.mean_span_length) if 0 < c.noise_density < 1 else (0, 0)
        for bad, msg in (
                (not 1 <= S < T, f"src_len ({S}) must be >= 1 and < block_size ({T}): lower src_len or raise "
                                 f"block_size, so the decoder has at least two positions"),
                (c.activation not in ("gated-gelu", "relu"), f"activation ({c.activation!r}): 'gated-gelu' or 'relu'"),
                (c.objective not in ("prefix", "span"), f"objective ({c.objective!r}) must be 'prefix' or 'span'"),
                (not 0 < c.noise_density < 1, f"noise_density ({c.noise_density}) must be in (0, 1): the fraction "
                                              f"of tokens span corruption drops, 0.15 in T5"),
                (c.mean_span_length < 1, f"mean_span_length ({c.mean_span_length}) must be >= 1 (3 in T5)"),
                (n_spans > T - n_noise, f"noise_density {c.noise_density} with spans of {c.mean_span_length} "
                                        f"leaves fewer kept tokens than spans: lower the density"),
                (not 2 <= c.num_buckets < 2 * c.max_distance,
                 f"num_buckets ({c.num_buckets}) must be >= 2 and < 2 * max_distance ({c.max_distance})")):
            if bad:
                raise ValueError(msg)
        self.config = config
        self.n_extra = n_spans + 2 if c.objective == "span" else 0  # 'span': sentinel rows (module docstring)
        self.n_rows = c.vocab_size + self.n_extra
        self.max_decoder_len = T - S + 1  # the decoder cache: the most decoder positions of the prefix reading
        self.shared, self.drop = nn.Embedding(self.n_rows, c.d_model), nn.Dropout(c.dropout)  # one table, both inputs
        self.encoder_bias = RelativePositionBias(c, bidirectional=True)
        self.encoder = nn.ModuleList([Block(c) for _ in range(c.n_encoder_layer)])
        self.encoder_norm = T5LayerNorm(c.d_model, c.layer_norm_eps)
        self.decoder_bias = RelativePositionBias(c, bidirectional=False)
        self.decoder = nn.ModuleList([Block(c, cross=True) for _ in range(c.n_decoder_layer)])
        self.decoder_norm = T5LayerNorm(c.d_model, c.layer_norm_eps)
        self.lm_head = nn.Linear(c.d_model, self.n_rows, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight
        self.output_scale = c.d_model ** -0.5 if c.tie_word_embeddings else 1.0  # tied: the embedding has std 1
        # T5's init (Mesh TensorFlow, as transformers): unit-scale embeddings, projections std fan_in^-0.5, W^Q also
        # 1/sqrt(d_kv); the untied output layer d_model^-0.5 (transformers: 1), so initial logits have unit scale.
        inner = c.n_head * c.d_kv
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    continue  # the norm gains stay 1
                fan_in = inner if name.endswith(".o.weight") else c.d_ff if name.endswith("wo.weight") else c.d_model
                nn.init.normal_(p, mean=0.0, std=1.0 if name == "shared.weight" else fan_in ** -0.5)
                if name.endswith(("qkv.weight", ".q.weight")):
                    p[:inner] *= c.d_kv ** -0.5  # W^Q: std (d_model d_kv)^-0.5

    def encode(self, src):
        """The encoder stack: src (B, S) -> memory (B, S, C), every position attending to every position."""
        bias = self.encoder_bias(src.size(1), src.size(1))  # (1, h, S, S), shared by every layer
        x = self.drop(self.shared(src))
        ckpt = self.config.grad_checkpoint and self.training  # generation encodes under no_grad, in eval mode
        for layer in self.encoder:
            x = checkpoint(layer, x, bias, use_reentrant=False) if ckpt else layer(x, bias)
        return self.drop(self.encoder_norm(x))  # (B, S, C)

    def decode(self, tgt, memory=None, start_pos=None):
        """The decoder stack: tgt (B, T') -> logits (B, T', n_rows); generation: memory None, start_pos = cache slot."""
        T, pos = tgt.size(1), start_pos or 0
        bias = self.decoder_bias(T, pos + T, pos)  # (1, h, T', pos + T'): the new queries only
        y = self.drop(self.shared(tgt))
        ckpt = self.config.grad_checkpoint and self.training and start_pos is None  # decoding has no backward
        for layer in self.decoder:
            y = checkpoint(layer, y, bias, memory, use_reentrant=False) if ckpt else layer(y, bias, memory, start_pos)
        y = self.drop(self.decoder_norm(y))
        return self.lm_head(y * self.output_scale if self.output_scale != 1.0 else y)

    def span_corrupt(self, idx, generator=None):
        """Section 3.3.4: idx (B, T) -> encoder input (B, T - n_noise + n_spans), decoder input and targets (B, n_noise
        + n_spans + 1); spans of random lengths >= 1, kept and dropped alternating (T5's random_spans_noise_mask)."""
        (B, T), V = idx.size(), self.config.vocab_size
        n_noise, n_spans = span_counts(T, self.config.noise_density, self.config.mean_span_length)
        if n_spans > T - n_noise:
            raise ValueError(f"a sequence of {T} tokens is too short for {n_spans} spans: use longer sequences")
        lengths = torch.stack([random_segmentation(T - n_noise, n_spans, B, generator),
                               random_segmentation(n_noise, n_spans, B, generator)], dim=2).view(B, 2 * n_spans)
        ends = lengths.cumsum(dim=1).to(idx.device)  # (B, 2 n_spans): kept span 0, dropped span 0, kept span 1, ...
        segment = torch.searchsorted(ends, torch.arange(T, device=idx.device).expand(B, T).contiguous(), right=True)
        noise = segment % 2 == 1  # (B, T)
        starts = noise & ~torch.cat([noise[:, :1] & False, noise[:, :-1]], dim=1)  # first token of a dropped span
        sentinel = torch.where(starts, V + segment // 2, -1)  # (B, T): V + span index where a span starts
        # Two slots per position, (sentinel if a span starts here, the token if it stays) and the same with the
        # dropped tokens; reading the slots in order and skipping the empty ones (-1) gives the two sequences.
        enc = torch.stack([sentinel, torch.where(noise, -1, idx)], dim=2).view(B, 2 * T)
        tgt = torch.stack([sentinel, torch.where(noise, idx, -1)], dim=2).view(B, 2 * T)
        enc = enc[enc >= 0].view(B, T - n_noise + n_spans)
        tgt = F.pad(tgt[tgt >= 0].view(B, n_noise + n_spans), (0, 1), value=V + n_spans)  # + the closing sentinel
        dec = F.pad(tgt[:, :-1], (1, 0), value=V + n_spans + 1)  # the start id, then the target shifted right
        return enc, dec, tgt

    def split(self, idx, targets, generator):
        """(encoder input, decoder input, the targets the logits align with) as forward reads idx."""
        if self.config.objective == "span" and targets is not None:
            return self.span_corrupt(idx, generator)
        S = self.config.src_len
        return idx[:, :S], idx[:, S - 1:], None if targets is None else targets[:, S - 1:]

    def forward(self, idx, targets=None):
        """idx (B, T), src_len <= T <= block_size -> (logits (B, T', n_rows), loss); objectives: module docstring."""
        T, c = idx.size(1), self.config
        if T > c.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {c.block_size}")
        g = None if self.training else torch.Generator().manual_seed(c.span_seed)  # 'span': one mask in eval mode
        enc, dec, tgt = self.split(idx, targets, g)
        self.loss_targets = tgt  # what the logits are scored against ('span': the spans): train.py's label smoothing
        if dec.size(1) == 0:  # 'prefix' with T < src_len
            raise ValueError(f"sequence of length {T} is shorter than src_len {c.src_len}: "
                             f"nothing left for the decoder")
        logits = self.decode(dec, self.encode(enc))  # (B, T', n_rows)
        loss = None if tgt is None else F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count; non_embedding leaves out the input embedding unless it is also the output layer."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.shared.weight.numel() if non_embedding and not self.config.tie_word_embeddings else n

    def flops_per_token(self):
        """Training FLOPs per token (PaLM appendix B, as models/transformer.py), E encoder and D decoder positions:
          [6 (P_enc E + (P_dec + V d) D) + 12 h d_kv (N_enc E^2 + N_dec (D^2 + D E))] / T"""
        c, T, S = self.config, self.config.block_size, self.config.src_len
        n_noise, n_spans = span_counts(T, c.noise_density, c.mean_span_length)
        E, D = (T - n_noise + n_spans, n_noise + n_spans + 1) if c.objective == "span" else (S, T - S + 1)
        p_enc, p_dec = (sum(p.numel() for p in stack.parameters()) for stack in (self.encoder, self.decoder))
        dense = 6 * (p_enc * E + (p_dec + self.n_rows * c.d_model) * D)
        attn = 12 * c.n_head * c.d_kv * (c.n_encoder_layer * E * E + c.n_decoder_layer * (D * D + D * E))
        return (dense + attn) / T

    def setup_cache(self, batch_size, device, dtype):
        """Decoder self-attention KV caches of max_decoder_len positions in the compute dtype; no cached source."""
        shape = (batch_size, self.config.n_head, self.max_decoder_len, self.config.d_kv)
        for layer in self.decoder:
            layer.self_attn.cache_k = torch.zeros(shape, device=device, dtype=dtype)
            layer.self_attn.cache_v = torch.zeros(shape, device=device, dtype=dtype)
            layer.cross_attn.cache_memory(None)

    def free_cache(self):
        for layer in self.decoder:
            layer.self_attn.cache_k = layer.self_attn.cache_v = None
            layer.cross_attn.cache_memory(None)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens (temperature 0 = greedy; never a sentinel), as models/transformer.py:
        the prompt's last block_size tokens read as forward reads them, then one token per step from the KV cache;
        when it is full, the most recent max(src_len, block_size // 2) tokens are read anew."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        dev = idx.device.type  # under autocast k/v come out in the autocast dtype: cache them in it
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.lm_head.weight.dtype
        self.setup_cache(idx.size(0), idx.device, dtype)
        V, keep, pos = self.config.vocab_size, max(self.config.src_len, self.config.block_size // 2), None
        for _ in range(max_new_tokens):
            if pos is None or pos == self.max_decoder_len:  # the prompt (whole if it fits), or a full decoder cache:
                window = idx[:, -(self.config.block_size if pos is None else keep):]  # read as forward reads it
                s = min(self.config.src_len, window.size(1))
                memory = self.encode(window[:, :s])
                for layer in self.decoder:
                    layer.cross_attn.cache_memory(memory)  # cross-attention keys/values once per source
                logits, pos = self.decode(window[:, s - 1:], start_pos=0), window.size(1) - s + 1
            else:
                logits, pos = self.decode(idx[:, -1:], start_pos=pos), pos + 1  # (B, 1, n_rows)
            idx = torch.cat((idx, sample_next(logits[:, -1, :V], temperature, top_k, top_p)), dim=1)  # (B, T + 1)
        self.free_cache()
        return idx

    # Hugging Face weights (transformers' T5ForConditionalGeneration): tensor renaming, no transformers import here
    def _hf_names(self):
        """Our parameter name -> transformers' names, read both ways; a packed matrix of ours is theirs stacked by
        rows. Their sub-layer j (0 self-attention, 1 cross-attention, then the FFN: f) has our norm ln_{j+1}."""
        wi = ["wi_0", "wi_1"] if self.config.activation == "gated-gelu" else ["wi"]
        names, rab = {"shared": ["shared"], "lm_head": ["lm_head"]}, "relative_attention_bias"
        for stack, f in (("encoder", 1), ("decoder", 2)):
            names[f"{stack}_norm"] = [f"{stack}.final_layer_norm"]
            names[f"{stack}_bias.{rab}"] = [f"{stack}.block.0.layer.0.SelfAttention.{rab}"]  # in their first layer
            layer = {f"ln_{j + 1}": [f"{j}.layer_norm"] for j in range(f + 1)}
            layer.update({"self_attn.qkv": [f"0.SelfAttention.{n}" for n in "qkv"],
                          "self_attn.o": ["0.SelfAttention.o"],
                          "ffn.wi": [f"{f}.DenseReluDense.{n}" for n in wi], "ffn.wo": [f"{f}.DenseReluDense.wo"]})
            if stack == "decoder":
                layer.update({"cross_attn.q": ["1.EncDecAttention.q"], "cross_attn.o": ["1.EncDecAttention.o"],
                              "cross_attn.kv": [f"1.EncDecAttention.{n}" for n in "kv"]})
            for i in range(len(getattr(self, stack))):
                h = f"{stack}.block.{i}.layer."
                names.update({f"{stack}.{i}.{k}": [h + n for n in v] for k, v in layer.items()})
        return {f"{k}.weight": [f"{n}.weight" for n in v] for k, v in names.items()}

    @classmethod
    def from_hf_state_dict(cls, sd, config):
        model = cls(config)
        model.load_state_dict({k: torch.cat([sd[n] for n in names]) for k, names in model._hf_names().items()})
        return model

    def to_hf(self):
        """(config class, config kwargs, model class, state dict) for the same network in transformers. Its v5 ties
        lm_head to shared whatever tie_word_embeddings says (that only switches the rescale): HFTwin unties them."""
        c = self.config
        kwargs = dict(vocab_size=self.n_rows, d_model=c.d_model, d_kv=c.d_kv, d_ff=c.d_ff, num_heads=c.n_head,
                      num_layers=c.n_encoder_layer, num_decoder_layers=c.n_decoder_layer,
                      relative_attention_num_buckets=c.num_buckets, relative_attention_max_distance=c.max_distance,
                      dropout_rate=0.0, layer_norm_epsilon=c.layer_norm_eps, feed_forward_proj=c.activation,
                      tie_word_embeddings=c.tie_word_embeddings, pad_token_id=0, eos_token_id=None, bos_token_id=None)
        sd = self.state_dict()
        hf = {n: t for k, names in self._hf_names().items() for n, t in zip(names, sd[k].chunk(len(names)))}
        hf["encoder.embed_tokens.weight"] = hf["decoder.embed_tokens.weight"] = hf["shared.weight"]
        return "T5Config", kwargs, "T5ForConditionalGeneration", hf

    def hf_inputs(self, idx, targets):
        """The twin's inputs and aligned targets: 'prefix' on the last block_size tokens, 'span' the eval-mode mask."""
        idx = idx if self.config.objective == "span" and targets is not None else idx[:, -self.config.block_size:]
        enc, dec, tgt = self.split(idx, targets, torch.Generator().manual_seed(self.config.span_seed))
        return dict(input_ids=enc, decoder_input_ids=dec), tgt


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
    """The next token from logits (B, V): greedy at temperature 0, else sampled after optional top-k / top-p."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        logits[logits < torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]] = -float("inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        sorted_logits[probs.cumsum(dim=-1) - probs > top_p] = -float("inf")  # the smallest set reaching top_p
        logits = torch.full_like(logits, -float("inf")).scatter(-1, sorted_idx, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
