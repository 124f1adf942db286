"""
T5: the Text-to-Text Transfer Transformer, an encoder-decoder with relative position biases.

Papers:
- Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer" (JMLR;
  section numbers below refer to it)
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
Defaults are v1.1 small (d_model 512, 6 heads of 64, d_ff 1024, 8 + 8 layers, no dropout); v1.0 is
Config(activation="relu", tie_word_embeddings=True, dropout=0.1).

Two objectives (Config.objective), and what the loss covers:
- "prefix" (the paper's prefix LM, section 3.3.1) on the positions of models/transformer.py: idx (B, T) is split at
  S = src_len, the encoder reads idx[:, :S], the decoder idx[:, S-1:] causally (the last source token starts it).
  Logits (B, T - S + 1, V) align with targets[:, S-1:]; the loss is the cross-entropy over them (-1 ignored).
- "span": forward(idx, targets) corrupts idx itself (targets only ask for a loss; eval_from does not apply).
  Sentinel i = vocab_size + i; vocab_size + n_spans closes the target (the paper's <Z>, figure 2) and
  vocab_size + n_spans + 1 starts the decoder. The loss is the mean cross-entropy over all n_noise + n_spans + 1
  target tokens (sentinels, dropped tokens, closing sentinel). Training draws a new mask per call, eval mode uses
  one seeded mask so every evaluation scores the same positions. Without targets, forward reads "prefix".

Generation, as models/transformer.py: the window is the prompt's last block_size tokens; its first
s = min(S, window length) tokens are the source, encoded once (and projected once to cross-attention keys/values);
window[:, s-1:] fills the decoder's KV cache in one pass, then one token per step with the position bias of the new
query only. When the cache is full (block_size - S + 1), the most recent max(S, block_size // 2) tokens become the
new window.

Interface (shared by every file in models/): Config, Model(config), Model.forward(idx, targets=None) -> (logits, loss),
Model.generate(idx, max_new_tokens, temperature, top_k, top_p) with a KV cache, Model.flops_per_token(); the twin
is transformers' T5ForConditionalGeneration (from_hf_state_dict, to_hf, hf_inputs).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# Norm


class T5LayerNorm(nn.Module):
    """y = g * x / sqrt(mean(x^2) + eps): no mean subtraction, no bias. The mean square is accumulated in float32
    or wider (as the reference does for half-precision inputs; float64 stays float64)."""

    def __init__(self, d_model, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x):
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


# ----------------------------------------------------------------------------------------------------------------
# Position: relative position buckets (section 2.1)


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """relative_position = key position - query position -> bucket in [0, num_buckets). Bidirectional (encoder):
    half the buckets for keys after the query, half for keys at or before it. Causal (decoder): keys after the query
    are masked anyway and share bucket 0. Within each half, distances below half of it are exact, farther ones are
    binned logarithmically up to max_distance, and everything beyond shares the last bucket."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # float32, as the reference computes it, so the bucket edges agree exactly
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    far = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, far)


class RelativePositionBias(nn.Module):
    """A learned scalar per (bucket, head), added to q.k. One per stack, computed once per forward and shared by
    all its layers (the reference stores the table in the stack's first layer)."""

    def __init__(self, config, bidirectional):
        super().__init__()
        self.relative_attention_bias = nn.Embedding(config.num_buckets, config.n_head)
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = config.num_buckets, config.max_distance

    def forward(self, q_len, k_len, start_pos=0):
        """Additive attention bias (1, h, q_len, k_len) for queries at start_pos .. start_pos + q_len - 1 and keys at
        0 .. k_len - 1; in the decoder it also holds the causal mask (-inf on keys after the query)."""
        device = self.relative_attention_bias.weight.device
        query = torch.arange(start_pos, start_pos + q_len, device=device)[:, None]
        rel = torch.arange(k_len, device=device)[None, :] - query  # (q_len, k_len)
        bucket = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        bias = self.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)  # (1, h, q_len, k_len)
        if not self.bidirectional and q_len > 1:
            bias = bias.masked_fill(rel > 0, float("-inf"))
        return bias


# ----------------------------------------------------------------------------------------------------------------
# Attention


class Attention(nn.Module):
    """softmax(Q K^T + bias) V over n_head heads of d_kv each: no 1/sqrt(d_kv) (scale=1.0 in SDPA), no biases.
    Self-attention packs W^Q, W^K, W^V into one matrix (rows q | k | v), cross-attention W^K, W^V (rows k | v),
    so each is one matmul; transformers stores them as separate q, k, v (to_hf splits them)."""

    def __init__(self, config, cross=False):
        super().__init__()
        self.n_head, self.d_kv, self.cross = config.n_head, config.d_kv, cross
        inner = config.n_head * config.d_kv
        if cross:
            self.q = nn.Linear(config.d_model, inner, bias=False)
            self.kv = nn.Linear(config.d_model, 2 * inner, bias=False)
        else:
            self.qkv = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.dropout = config.dropout  # on the attention weights, as T5
        self.cache_k = self.cache_v = None  # decoder self-attention cache (compute dtype), set by Model.setup_cache
        self.memory_k = self.memory_v = None  # cross-attention keys/values of the current source (generation)

    def heads(self, x, n):
        B, T, _ = x.size()
        return x.view(B, T, n, self.n_head, self.d_kv).permute(2, 0, 3, 1, 4)  # n x (B, h, T, d_kv)

    def forward(self, x, bias=None, memory=None, start_pos=None):
        """x (B, T, C). Self-attention: bias (1, h, T, T_k) holds the position bias (and the causal mask), start_pos
        not None appends k, v to the cache. Cross-attention: keys and values from memory (B, S, C), or in generation
        (memory None) the ones cache_memory computed; no position bias."""
        B, T, _ = x.size()
        if self.cross:
            q = self.heads(self.q(x), 1)[0]
            k, v = self.heads(self.kv(memory), 2) if memory is not None else (self.memory_k, self.memory_v)
        else:
            q, k, v = self.heads(self.qkv(x), 3)  # (B, h, T, d_kv) each
            if start_pos is not None:  # generation: append to the cache, attend over everything cached so far
                end = start_pos + T
                self.cache_k[:B, :, start_pos:end] = k
                self.cache_v[:B, :, start_pos:end] = v
                k, v = self.cache_k[:B, :, :end], self.cache_v[:B, :, :end]
        if bias is not None:
            bias = bias.to(q.dtype)  # the bias table is float32 under autocast
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.d_kv))  # (B, T, C)

    def cache_memory(self, memory):
        """Project the encoder output to keys/values once per source (generation); memory None frees them."""
        self.memory_k, self.memory_v = (None, None) if memory is None else self.heads(self.kv(memory), 2)


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward


class FeedForward(nn.Module):
    """v1.1 'gated-gelu' (Shazeer 2020): (GELU(x W_0) * x W_1) W_o with GELU's tanh approximation, W_0 and W_1
    packed as one matrix (rows W_0 | W_1, one matmul). v1.0 'relu': ReLU(x W_i) W_o, the 2017 FFN without biases."""

    def __init__(self, config):
        super().__init__()
        self.gated = config.activation == "gated-gelu"
        self.wi = nn.Linear(config.d_model, (2 if self.gated else 1) * config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.gated:
            gate, up = self.wi(x).chunk(2, dim=-1)
            return self.wo(self.drop(F.gelu(gate, approximate="tanh") * up))
        return self.wo(self.drop(F.relu(self.wi(x))))


# ----------------------------------------------------------------------------------------------------------------
# Blocks: x + Dropout(Sublayer(Norm(x))) (pre-norm)


class EncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = T5LayerNorm(config.d_model, config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.ln_2 = T5LayerNorm(config.d_model, config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, bias):
        x = x + self.drop(self.self_attn(self.ln_1(x), bias))  # (B, S, C)
        return x + self.drop(self.ffn(self.ln_2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = T5LayerNorm(config.d_model, config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.ln_2 = T5LayerNorm(config.d_model, config.layer_norm_eps)
        self.cross_attn = Attention(config, cross=True)
        self.ln_3 = T5LayerNorm(config.d_model, config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, y, bias, memory=None, start_pos=None):
        y = y + self.drop(self.self_attn(self.ln_1(y), bias, start_pos=start_pos))  # (B, T', C)
        y = y + self.drop(self.cross_attn(self.ln_2(y), memory=memory))
        return y + self.drop(self.ffn(self.ln_3(y)))


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    block_size: int = 1024  # longest block: src_len source tokens, then the decoder reads block_size - src_len + 1
    vocab_size: int = 50304  # the text's vocabulary; objective 'span' adds its sentinel rows after it
    src_len: int = 512  # objective 'prefix': the first src_len tokens of a block are the source; < block_size
    d_model: int = 512  # T5 v1.1 small: d_model 512, 6 heads of d_kv 64, d_ff 1024, 8 + 8 layers
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


def span_counts(T, noise_density, mean_span_length):
    """(noise tokens, spans) in a sequence of T, rounded as T5's random_spans_noise_mask does."""
    n_noise = min(max(round(T * noise_density), 1), T - 1)
    return n_noise, max(round(n_noise / mean_span_length), 1)


def random_segmentation(n_items, n_segments, batch_size, generator):
    """(B, n_segments) lengths >= 1 summing to n_items, every such composition equally likely: n_segments - 1
    distinct cut points among the n_items - 1 gaps (T5's _random_segmentation, without a Python loop)."""
    cuts = torch.rand(batch_size, n_items - 1, generator=generator).argsort(dim=1)[:, :n_segments - 1]
    edges = F.pad(cuts.sort(dim=1).values + 1, (1, 0), value=0)
    return torch.diff(F.pad(edges, (0, 1), value=n_items), dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Model


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        c = config
        S, T = c.src_len, c.block_size
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
        # Sentinels (objective 'span'): vocab_size + i for span i, vocab_size + n_spans closes the target, and
        # vocab_size + n_spans + 1 starts the decoder; the embedding and output rows include them.
        self.n_extra = n_spans + 2 if c.objective == "span" else 0
        self.n_rows = c.vocab_size + self.n_extra
        self.max_decoder_len = T - S + 1  # the decoder cache: the most decoder positions of the prefix reading
        self.shared = nn.Embedding(self.n_rows, c.d_model)  # one table for the encoder and decoder inputs
        self.drop = nn.Dropout(c.dropout)
        self.encoder_bias = RelativePositionBias(c, bidirectional=True)
        self.encoder = nn.ModuleList([EncoderLayer(c) for _ in range(c.n_encoder_layer)])
        self.encoder_norm = T5LayerNorm(c.d_model, c.layer_norm_eps)
        self.decoder_bias = RelativePositionBias(c, bidirectional=False)
        self.decoder = nn.ModuleList([DecoderLayer(c) for _ in range(c.n_decoder_layer)])
        self.decoder_norm = T5LayerNorm(c.d_model, c.layer_norm_eps)
        self.lm_head = nn.Linear(c.d_model, self.n_rows, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight
        # Decoder output scale before the output layer: d_model^-0.5 when tied (the embedding has std 1), else 1.
        self.output_scale = c.d_model ** -0.5 if c.tie_word_embeddings else 1.0

        # T5's initialisation (Mesh TensorFlow, as transformers reproduces it): unit-scale embeddings; every
        # projection std fan_in^-0.5, except W^Q, which also takes the missing 1/sqrt(d_kv) of the attention.
        # The untied output layer gets std d_model^-0.5 (transformers draws it with std 1, which puts the logits
        # at scale sqrt(d_model) at init), so the initial logits have unit scale as in the tied case.
        d, inner = c.d_model, c.n_head * c.d_kv
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    continue  # the norm gains stay 1
                std = {"shared.weight": 1.0, "lm_head.weight": d ** -0.5}.get(name, d ** -0.5)
                if name.endswith(".o.weight"):
                    std = inner ** -0.5
                elif name.endswith("wo.weight"):
                    std = c.d_ff ** -0.5
                nn.init.normal_(p, mean=0.0, std=std)
                if name.endswith("qkv.weight") or name.endswith(".q.weight"):
                    p[:inner] *= c.d_kv ** -0.5  # W^Q: std (d_model d_kv)^-0.5

    # ------------------------------------------------------------------------------------------------------------
    # The stacks

    def encode(self, src):
        """The encoder stack: src (B, S) -> memory (B, S, C), every position attending to every position."""
        S = src.size(1)
        bias = self.encoder_bias(S, S)  # (1, h, S, S), shared by every layer
        x = self.drop(self.shared(src))
        for layer in self.encoder:
            x = layer(x, bias)
        return self.drop(self.encoder_norm(x))  # (B, S, C)

    def decode(self, tgt, memory=None, start_pos=None):
        """The decoder stack: tgt (B, T') -> logits (B, T', n_rows). Full forward: memory is the encoder output.
        Generation: memory None (cross-attention uses cache_memory's keys/values) and start_pos the position of
        tgt's first token in the self-attention cache."""
        T, pos = tgt.size(1), start_pos or 0
        bias = self.decoder_bias(T, pos + T, pos)  # (1, h, T', pos + T'): the new queries only
        y = self.drop(self.shared(tgt))
        for layer in self.decoder:
            y = layer(y, bias, memory, start_pos)
        y = self.drop(self.decoder_norm(y))
        return self.lm_head(y * self.output_scale if self.output_scale != 1.0 else y)

    # ------------------------------------------------------------------------------------------------------------
    # Span corruption (section 3.3.4)

    def span_corrupt(self, idx, generator=None):
        """idx (B, T) -> (encoder input (B, T - n_noise + n_spans), decoder input and decoder targets (B, n_noise +
        n_spans + 1)). Per sequence: n_noise tokens in n_spans spans, each span a random length >= 1, kept and
        dropped spans alternating from a kept one (T5's random_spans_noise_mask). The encoder input replaces each
        dropped span by its sentinel; the target is each sentinel followed by its span, then the closing sentinel;
        the decoder input is the target shifted right after the start id."""
        B, T = idx.size()
        V = self.config.vocab_size
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

    # ------------------------------------------------------------------------------------------------------------
    # Forward

    def forward(self, idx, targets=None):
        """idx (B, T), src_len <= T <= block_size. 'prefix' (and any call without targets): logits
        (B, T - src_len + 1, n_rows) aligned with targets[:, src_len-1:], the loss over those targets. 'span' with
        targets: logits (B, n_noise + n_spans + 1, n_rows) of the span targets and the loss over all of them."""
        T, c = idx.size(1), self.config
        S = c.src_len
        if T > c.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {c.block_size}")
        if c.objective == "span" and targets is not None:
            # a new mask per call in training, the same seeded mask in eval mode
            g = None if self.training else torch.Generator().manual_seed(c.span_seed)
            enc, dec, tgt = self.span_corrupt(idx, g)
            logits = self.decode(dec, self.encode(enc))
            return logits, F.cross_entropy(logits.reshape(-1, self.n_rows), tgt.reshape(-1))
        if T < S:
            raise ValueError(f"sequence of length {T} is shorter than src_len {S}: nothing left for the decoder")
        logits = self.decode(idx[:, S - 1:], self.encode(idx[:, :S]))  # (B, T - S + 1, n_rows)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.n_rows), targets[:, S - 1:].reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count; non_embedding leaves out the input embedding unless it is also the output layer."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.shared.weight.numel() if non_embedding and not self.config.tie_word_embeddings else n

    def flops_per_token(self):
        """Training FLOPs (forward + backward) per token of a block_size block, PaLM appendix B as
        models/transformer.py: 6 per parameter per token through it, plus 12 * n_head * d_kv per (query, key) pair
        per layer. With E encoder and D decoder positions per block of T ('prefix': S and T - S + 1; 'span':
        T - n_noise + n_spans and n_noise + n_spans + 1):
          [6 (P_enc E + (P_dec + V d) D) + 12 h d_kv (N_enc E^2 + N_dec (D^2 + D E))] / T"""
        c = self.config
        T = c.block_size
        if c.objective == "span":
            n_noise, n_spans = span_counts(T, c.noise_density, c.mean_span_length)
            E, D = T - n_noise + n_spans, n_noise + n_spans + 1
        else:
            E, D = c.src_len, T - c.src_len + 1
        p_enc = sum(p.numel() for p in self.encoder.parameters())
        p_dec = sum(p.numel() for p in self.decoder.parameters())
        dense = 6 * (p_enc * E + (p_dec + self.n_rows * c.d_model) * D)
        attn = 12 * c.n_head * c.d_kv * (c.n_encoder_layer * E * E + c.n_decoder_layer * (D * D + D * E))
        return (dense + attn) / T

    # ------------------------------------------------------------------------------------------------------------
    # Generate

    def setup_cache(self, batch_size, device, dtype):
        """Allocate the decoder self-attention KV caches of max_decoder_len positions (dtype = the compute dtype)
        and drop any cached source."""
        shape = (batch_size, self.config.n_head, self.max_decoder_len, self.config.d_kv)
        for layer in self.decoder:
            layer.self_attn.cache_k = torch.zeros(shape, device=device, dtype=dtype)
            layer.self_attn.cache_v = torch.zeros(shape, device=device, dtype=dtype)
            layer.cross_attn.cache_memory(None)

    def free_cache(self):
        for layer in self.decoder:
            layer.self_attn.cache_k = layer.self_attn.cache_v = None
            layer.cross_attn.cache_memory(None)

    def prefill(self, window):
        """Start from a window (B, W) as forward reads it: the first s = min(src_len, W) tokens are the source,
        encoded once and projected to every layer's cross-attention keys/values; window[:, s-1:] fills the decoder
        cache. Returns the last position's logits (B, 1, n_rows) and the number of decoder positions cached."""
        s = min(self.config.src_len, window.size(1))
        memory = self.encode(window[:, :s])
        for layer in self.decoder:
            layer.cross_attn.cache_memory(memory)
        tgt = window[:, s - 1:]
        return self.decode(tgt, start_pos=0)[:, -1:], tgt.size(1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens; greedy at temperature 0. The prompt's last block_size tokens are
        prefilled as forward reads them, then each step feeds only the newest token to the decoder. When the decoder
        cache is full the most recent max(src_len, block_size // 2) tokens are prefilled the same way. Sentinels are
        never sampled. The caches are freed before returning. Bad arguments raise ValueError (check_generate_args)."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        if max_new_tokens == 0:
            return idx
        dev = idx.device.type  # under autocast k/v come out in the autocast dtype: cache them in it
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.lm_head.weight.dtype
        self.setup_cache(idx.size(0), idx.device, dtype)
        V, keep = self.config.vocab_size, max(self.config.src_len, self.config.block_size // 2)
        logits, pos = self.prefill(idx[:, -self.config.block_size:])  # the whole prompt if it fits
        for i in range(max_new_tokens):
            idx_next = sample_next(logits[:, -1, :V], temperature, top_k, top_p)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            if i == max_new_tokens - 1:
                break
            if pos == self.max_decoder_len:  # decoder cache full: a new window from the most recent tokens
                logits, pos = self.prefill(idx[:, -keep:])
            else:
                logits = self.decode(idx_next, start_pos=pos)  # (B, 1, n_rows)
                pos += 1
        self.free_cache()
        return idx

    # ------------------------------------------------------------------------------------------------------------
    # Hugging Face weights (transformers' T5ForConditionalGeneration): tensor renaming, no transformers import here

    def _hf_names(self):
        """Our parameter name -> transformers' names; a packed matrix of ours is theirs stacked by rows (equal
        parts). transformers' sub-layers: 0 self-attention, 1 cross-attention (decoder), then the FFN."""
        names = {"shared.weight": ["shared.weight"], "lm_head.weight": ["lm_head.weight"],
                 "encoder_norm.weight": ["encoder.final_layer_norm.weight"],
                 "decoder_norm.weight": ["decoder.final_layer_norm.weight"]}
        wi = ["wi_0", "wi_1"] if self.config.activation == "gated-gelu" else ["wi"]
        for stack in ("encoder", "decoder"):
            names[f"{stack}_bias.relative_attention_bias.weight"] = [
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
            f = 1 if stack == "encoder" else 2  # the FFN's sub-layer
            for i in range(len(getattr(self, stack))):
                o, h = f"{stack}.{i}.", f"{stack}.block.{i}.layer."
                names.update({o + "ln_1.weight": [h + "0.layer_norm.weight"],
                              o + "self_attn.qkv.weight": [h + f"0.SelfAttention.{n}.weight" for n in "qkv"],
                              o + "self_attn.o.weight": [h + "0.SelfAttention.o.weight"],
                              o + f"ln_{f + 1}.weight": [h + f"{f}.layer_norm.weight"],
                              o + "ffn.wi.weight": [h + f"{f}.DenseReluDense.{n}.weight" for n in wi],
                              o + "ffn.wo.weight": [h + f"{f}.DenseReluDense.wo.weight"]})
                if stack == "decoder":
                    names.update({o + "ln_2.weight": [h + "1.layer_norm.weight"],
                                  o + "cross_attn.q.weight": [h + "1.EncDecAttention.q.weight"],
                                  o + "cross_attn.kv.weight": [h + f"1.EncDecAttention.{n}.weight" for n in "kv"],
                                  o + "cross_attn.o.weight": [h + "1.EncDecAttention.o.weight"]})
        return names

    @classmethod
    def from_hf_state_dict(cls, sd, config):
        model = cls(config)
        ours = {k: torch.cat([sd[n] for n in names]) for k, names in model._hf_names().items()}
        model.load_state_dict(ours)
        return model

    def to_hf(self):
        """(config class, config kwargs, model class, state dict) for the same network in transformers.
        transformers 5 ties lm_head to shared whatever tie_word_embeddings says (the flag only switches the
        d_model^-0.5 rescale): an untied twin must untie them before loading (bench.py's HFTwin does)."""
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
        """The twin's inputs for what forward computes, and the targets its logits align with (-1 ignored).
        'prefix' (and no targets): input_ids = idx[:, :S], decoder_input_ids = idx[:, S-1:] (the decoder prompt in
        generation; the last block_size tokens, as generate reads them). 'span': the eval-mode mask."""
        S = self.config.src_len
        if self.config.objective == "span" and targets is not None:
            enc, dec, tgt = self.span_corrupt(idx, torch.Generator().manual_seed(self.config.span_seed))
            return dict(input_ids=enc, decoder_input_ids=dec), tgt
        idx = idx[:, -self.config.block_size:]
        return dict(input_ids=idx[:, :S], decoder_input_ids=idx[:, S - 1:]), (
            None if targets is None else targets[:, S - 1:])


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
