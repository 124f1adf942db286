"""
Transformer: the encoder-decoder of "Attention Is All You Need".

Paper:
- Vaswani et al. 2017, "Attention Is All You Need" (section numbers below refer to it)

What changed since the previous generation (recurrent encoder-decoders with attention: Sutskever et al. 2014,
Bahdanau et al. 2014):
- No recurrence and no convolution: every layer is attention plus a position-wise feed-forward network, so all
  positions of a sequence are computed in parallel (section 3).
- Scaled dot-product attention, run as several heads in parallel (multi-head attention, section 3.2).
- Order is injected with fixed sinusoidal positional encodings added to the embeddings (section 3.5).
- Each sub-layer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) (post-LN residual, sections 3.1 and 5.4).
- One weight matrix shared by the source embedding, the target embedding and the pre-softmax projection, with
  the embeddings multiplied by sqrt(d_model) (section 3.4).
- Trained with Adam (0.9, 0.98, 1e-9), the warmup / inverse-square-root "noam" schedule and label smoothing 0.1
  (sections 5.3, 5.4): set through config/transformer_shakespeare_char.py and train.py, not in this file.

How a language-model training block becomes a sequence-to-sequence pair (this is our choice, not the paper's):
  idx (B, T) is split at src_len = S. The encoder reads the source idx[:, :S] bidirectionally. The decoder reads
  idx[:, S-1:] (T - S + 1 tokens) causally: its first input is the last source token, acting as the start symbol,
  and it cross-attends to the encoder output. Decoder position j predicts targets[:, S-1+j], so
    - forward returns logits of shape (B, T - S + 1, V), aligned with targets[:, S-1:];
    - the loss covers exactly targets[:, S-1:]; targets[:, :S-1] (the source part) are ignored.
  The encoder outputs no predictions, so the first S - 1 targets of each block are never scored. A decoder-only
  model scores all T targets, including the early ones that have almost no context; to compare the two, score
  both on targets[:, S-1:] only (each of those sees at least S tokens of context in both models).

Loss: the plain cross-entropy, as in every other file. The paper's label smoothing (0.1, section 5.4) is train.py's
`label_smoothing` setting, which config/transformer_shakespeare_char.py sets.

Generation computes what forward computes on a window of the sequence: the window is the prompt's last block_size
tokens (all of it if shorter); its first s = min(S, window length) tokens are the source, encoded once (and
projected once to cross-attention keys/values), and window[:, s-1:] fills the decoder's self-attention KV cache in
one pass. Then one token per step from the cache. The decoder saw at most block_size - S + 1 positions in
training; when its cache is full, the most recent max(S, block_size // 2) tokens become the new window (source
re-encoded, decoder re-prefilled), so the extra cost is one encoder pass and one prefill per ~block_size // 2
new tokens.

Interface (shared by every file in models/): Config, Model(config), Model.forward(idx, targets=None) -> (logits, loss),
Model.generate(idx, max_new_tokens, temperature, top_k, top_p) with a KV cache, Model.flops_per_token().
There is no Hugging Face counterpart of this model, so no from_hf_state_dict / to_hf.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------------------------
# Norm


def layer_norm(d_model):
    # Section 3.1 cites layer normalization (Ba et al. 2016); eps 1e-5 as torch.nn.Transformer uses.
    return nn.LayerNorm(d_model, eps=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Position (section 3.5)


def sinusoidal_encoding(n_pos, d_model):
    """PE(pos, 2i) = sin(pos / 10000^(2i / d_model)), PE(pos, 2i + 1) = cos(pos / 10000^(2i / d_model)).
    Fixed, not learned: PE(pos + k) is a linear function of PE(pos), which should make relative positions easy to
    attend to; learned positions did no better (table 3, row E) and sinusoids may extrapolate to longer sequences."""
    pos = torch.arange(n_pos, dtype=torch.float32).unsqueeze(1)  # (n_pos, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)  # (d_model / 2,)
    angle = pos / (10000.0 ** (two_i / d_model))  # (n_pos, d_model / 2)
    pe = torch.zeros(n_pos, d_model)
    pe[:, 0::2] = torch.sin(angle)  # even dimensions
    pe[:, 1::2] = torch.cos(angle)  # odd dimensions
    return pe  # (n_pos, d_model)


# ----------------------------------------------------------------------------------------------------------------
# Attention (section 3.2)


def split_heads(x, n_head):
    B, T, C = x.size()
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, h, T, d_k)


def merge_heads(x):
    B, h, T, d_k = x.size()
    return x.transpose(1, 2).contiguous().view(B, T, h * d_k)  # Concat(head_1, ..., head_h): (B, T, C)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V), with
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V (sections 3.2.1, 3.2.2): F.scaled_dot_product_attention.
    The h per-head projections of size d_k = d_model / h are stored side by side in one d_model x d_model matrix.

    Used three ways (section 3.2.3):
    - encoder self-attention: every source position sees every source position;
    - decoder masked self-attention: position i sees positions <= i (causal=True), with a KV cache for generation;
    - encoder-decoder attention: queries from the decoder, keys and values from the encoder output (`memory`);
      for generation they are computed once per source by cache_memory() (cross=True)."""

    def __init__(self, config, causal=False, cross=False):
        super().__init__()
        self.n_head = config.n_head
        self.causal = causal
        self.cross = cross
        C = config.d_model
        self.w_q = nn.Linear(C, C)
        self.w_k = nn.Linear(C, C)
        self.w_v = nn.Linear(C, C)
        self.w_o = nn.Linear(C, C)
        self.cache_k = self.cache_v = None  # decoder self-attention cache (compute dtype), set by Model.setup_cache
        self.memory_k = self.memory_v = None  # cross-attention keys/values of the current source, set by cache_memory

    def forward(self, x, memory=None, start_pos=None):
        """x (B, T, C) gives the queries. Self-attention: keys and values from x too. Cross-attention: from
        `memory` (B, S, C), or in generation (memory None) the ones cache_memory computed for the current source."""
        q = split_heads(self.w_q(x), self.n_head)  # (B, h, T, d_k)
        if self.cross:
            if memory is not None:
                k, v = split_heads(self.w_k(memory), self.n_head), split_heads(self.w_v(memory), self.n_head)
            else:
                k, v = self.memory_k, self.memory_v  # (B, h, S, d_k)
            y = F.scaled_dot_product_attention(q, k, v)  # every target position may see the whole source
        else:
            k, v = split_heads(self.w_k(x), self.n_head), split_heads(self.w_v(x), self.n_head)  # (B, h, T, d_k)
            if start_pos is None:  # training / full forward (flash attention on CUDA via SDPA)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            else:  # decoder generation: append to the cache, attend over everything cached so far
                y = self.attend_cached(q, k, v, start_pos)
        # The paper applies dropout to sub-layer outputs only (section 5.4), not to the attention weights.
        return self.w_o(merge_heads(y))  # (B, T, C)

    def attend_cached(self, q, k, v, start_pos):
        B, T = q.size(0), q.size(2)
        end = start_pos + T
        self.cache_k[:B, :, start_pos:end] = k
        self.cache_v[:B, :, start_pos:end] = v
        k, v = self.cache_k[:B, :, :end], self.cache_v[:B, :, :end]
        # A single new query may see the whole cache, so no mask: `is_causal=True` would align the causal
        # triangle to the top-left and let it see only the first key. A multi-token chunk needs an explicit mask.
        mask = None
        if T > 1:
            mask = torch.ones(T, end, dtype=torch.bool, device=q.device).tril(diagonal=start_pos)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def cache_memory(self, memory):
        """Project the encoder output to keys/values once per source (generation); memory None frees them."""
        if memory is None:
            self.memory_k = self.memory_v = None
        else:
            self.memory_k = split_heads(self.w_k(memory), self.n_head)  # (B, h, S, d_k)
            self.memory_v = split_heads(self.w_v(memory), self.n_head)  # (B, h, S, d_k)


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward (section 3.3)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, the same at every position (two 1x1 convolutions), d_ff = 4 d_model."""

    def __init__(self, config):
        super().__init__()
        self.w_1 = nn.Linear(config.d_model, config.d_ff)
        self.w_2 = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x):
        return self.w_2(F.relu(self.w_1(x)))


# ----------------------------------------------------------------------------------------------------------------
# Blocks (section 3.1): each sub-layer is LayerNorm(x + Dropout(Sublayer(x))) (post-LN; dropout from section 5.4)
# torch.nn.Transformer computes the same function at dropout 0; it also drops attention weights and the FFN's hidden
# units (the paper does not), and ends each stack with an extra LayerNorm (the paper's stacks end with the last
# sub-layer's norm): tests/test_transformer.py shows that norm is the whole difference.


class EncoderLayer(nn.Module):
    """Two sub-layers: multi-head self-attention over the source, then the feed-forward network."""

    def __init__(self, config):
        super().__init__()
        self.self_attn = MultiHeadAttention(config)
        self.ln_1 = layer_norm(config.d_model)
        self.ffn = FeedForward(config)
        self.ln_2 = layer_norm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.ln_1(x + self.dropout(self.self_attn(x)))  # (B, S, C)
        x = self.ln_2(x + self.dropout(self.ffn(x)))
        return x


class DecoderLayer(nn.Module):
    """Three sub-layers: masked self-attention (so position i depends only on outputs before i), attention over
    the encoder output, then the feed-forward network."""

    def __init__(self, config):
        super().__init__()
        self.self_attn = MultiHeadAttention(config, causal=True)
        self.ln_1 = layer_norm(config.d_model)
        self.cross_attn = MultiHeadAttention(config, cross=True)
        self.ln_2 = layer_norm(config.d_model)
        self.ffn = FeedForward(config)
        self.ln_3 = layer_norm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, y, memory=None, start_pos=None):
        y = self.ln_1(y + self.dropout(self.self_attn(y, start_pos=start_pos)))  # (B, T', C)
        y = self.ln_2(y + self.dropout(self.cross_attn(y, memory=memory)))
        y = self.ln_3(y + self.dropout(self.ffn(y)))
        return y


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    block_size: int = 1024  # longest block: src_len source tokens, then the decoder reads block_size - src_len + 1
    vocab_size: int = 50304  # one vocabulary for source and target, as the paper's shared BPE (section 3.4)
    src_len: int = 512  # the first src_len tokens of a block are the encoder's source; must be < block_size
    d_model: int = 512  # the base model of the paper (table 3): d_model 512, h 8, d_ff 2048, N 6
    n_head: int = 8  # h
    d_ff: int = 2048
    n_encoder_layer: int = 6  # N
    n_decoder_layer: int = 6  # N
    dropout: float = 0.1  # P_drop (section 5.4)
    grad_checkpoint: bool = False  # recompute each layer's activations in backward: less memory, ~1/3 more compute


# ----------------------------------------------------------------------------------------------------------------
# Model


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        if config.d_model % config.n_head != 0:
            raise ValueError(f"d_model ({config.d_model}) must be divisible by n_head ({config.n_head})")
        if config.d_model % 2 != 0:
            raise ValueError(f"d_model ({config.d_model}) must be even: sinusoids come in sin/cos pairs")
        if not 1 <= config.src_len < config.block_size:
            raise ValueError(f"src_len ({config.src_len}) must be at least 1 and less than block_size "
                             f"({config.block_size}) so the decoder has at least two positions")
        self.config = config
        # The longest decoder input seen in training: the start token (last source token) + block_size - src_len.
        self.max_decoder_len = config.block_size - config.src_len + 1
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        # A buffer, not a parameter, and not saved: it is a fixed function of the position (section 3.5).
        self.register_buffer("pe", sinusoidal_encoding(config.block_size, config.d_model), persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList([EncoderLayer(config) for _ in range(config.n_encoder_layer)])
        self.decoder = nn.ModuleList([DecoderLayer(config) for _ in range(config.n_decoder_layer)])
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # Section 3.4: one matrix for both embeddings and the pre-softmax linear transformation.
        self.embedding.weight = self.lm_head.weight

        # The paper gives no initialisation: std 0.02 everywhere, as in the other files. So at init the token part
        # of the input (std 0.02 * sqrt(d_model), 0.23 at d_model 128) is smaller than the sinusoids (RMS 0.71) and
        # the loss starts near ln(vocab_size). The common alternative, std d_model^-0.5 (tensor2tensor, fairseq),
        # gives unit-scale inputs, but then the tied output layer strongly predicts the input token again (loss 9.3
        # at init on Shakespeare characters at d_model 128), and it trained worse there (val 2.60 vs 2.49 at step 250).
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def embed(self, idx, start_pos=0):
        """Section 3.4 and 3.5: token embedding * sqrt(d_model) + positional encoding, then dropout (section 5.4).
        Source and target positions both count from 0: they are separate sequences."""
        T = idx.size(1)
        x = self.embedding(idx) * math.sqrt(self.config.d_model) + self.pe[start_pos:start_pos + T]
        return self.drop(x)  # (B, T, C)

    def encode(self, src):
        """The encoder stack: src (B, S) -> memory (B, S, C), every position attending to every position."""
        if src.size(1) > self.config.block_size:
            raise ValueError(f"source of length {src.size(1)} is longer than block_size {self.config.block_size}")
        x = self.embed(src)
        ckpt = self.config.grad_checkpoint and self.training  # generation encodes under no_grad, in eval mode
        for layer in self.encoder:
            x = checkpoint(layer, x, use_reentrant=False) if ckpt else layer(x)
        return x  # (B, S, C)

    def decode(self, tgt, memory=None, start_pos=None):
        """The decoder stack: tgt (B, T') -> hidden states (B, T', C). Full forward: memory is the encoder output.
        Generation: memory None (cross-attention uses cache_memory's keys/values) and start_pos the position of
        tgt's first token in the self-attention cache."""
        end = tgt.size(1) + (start_pos or 0)
        if end > self.max_decoder_len:
            raise ValueError(f"decoder input of length {end} is longer than block_size - src_len + 1 = "
                             f"{self.max_decoder_len}")
        y = self.embed(tgt, start_pos or 0)
        ckpt = self.config.grad_checkpoint and self.training and start_pos is None  # decoding has no backward
        for layer in self.decoder:
            y = checkpoint(layer, y, memory, use_reentrant=False) if ckpt else layer(y, memory, start_pos)
        return y  # (B, T', C)

    def forward(self, idx, targets=None):
        """idx (B, T), src_len <= T <= block_size. Returns logits (B, T - src_len + 1, V) for the decoder inputs
        idx[:, src_len-1:], i.e. predictions of targets[:, src_len-1:], and the loss over those targets only."""
        B, T = idx.size()
        S = self.config.src_len
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        if T < S:
            raise ValueError(f"sequence of length {T} is shorter than src_len {S}: nothing left for the decoder")
        memory = self.encode(idx[:, :S])  # (B, S, C)
        y = self.decode(idx[:, S - 1:], memory)  # (B, T - S + 1, C)
        # Section 3.4 multiplies the embedding weights by sqrt(d_model) on the input side only; the shared
        # pre-softmax projection uses them as they are.
        logits = self.lm_head(y)  # (B, T - S + 1, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets[:, S - 1:].reshape(-1), ignore_index=-1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count. The sinusoids are a buffer, not parameters, and the one embedding matrix is counted
        (it is also the output layer, which does matmul work), so non_embedding changes nothing here."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs (forward + backward) per token of a block_size block, in the style of PaLM appendix B:
        6 FLOPs per parameter per token that passes through it, plus 12 * d_model per (query, key) pair per layer
        (QK^T and AV, forward and backward; the causal mask's savings ignored). With T = block_size, S = src_len,
        D = T - S + 1 decoder positions:
          [6 (P_enc S + (P_dec + V d) D) + 12 d (N_enc S^2 + N_dec (D^2 + D S))] / T
        P_enc, P_dec: parameters of the encoder / decoder layers; V d: the output projection."""
        cfg = self.config
        T, S, d = cfg.block_size, cfg.src_len, cfg.d_model
        D = T - S + 1
        p_enc = sum(p.numel() for p in self.encoder.parameters())
        p_dec = sum(p.numel() for p in self.decoder.parameters())
        dense = 6 * (p_enc * S + (p_dec + cfg.vocab_size * d) * D)
        attn = 12 * d * (cfg.n_encoder_layer * S * S + cfg.n_decoder_layer * (D * D + D * S))
        return (dense + attn) / T

    # ------------------------------------------------------------------------------------------------------------
    # Generate

    def setup_cache(self, batch_size, device, dtype):
        """Allocate the decoder self-attention KV caches of max_decoder_len positions (dtype = the compute dtype)
        and drop any cached source."""
        shape = (batch_size, self.config.n_head, self.max_decoder_len, self.config.d_model // self.config.n_head)
        for layer in self.decoder:
            layer.self_attn.cache_k = torch.zeros(shape, device=device, dtype=dtype)
            layer.self_attn.cache_v = torch.zeros(shape, device=device, dtype=dtype)
            layer.cross_attn.cache_memory(None)

    def free_cache(self):
        for layer in self.decoder:
            layer.self_attn.cache_k = layer.self_attn.cache_v = None
            layer.cross_attn.cache_memory(None)

    def cache_memory(self, memory):
        """Cross-attention keys/values of a new source, once for all the tokens decoded against it."""
        for layer in self.decoder:
            layer.cross_attn.cache_memory(memory)

    def prefill(self, window):
        """Start from a window (B, W) of the sequence as forward reads it: the first s = min(src_len, W) tokens are
        the source, encoded once; window[:, s-1:] fills the decoder cache. Returns the last position's logits
        (B, 1, V) and the number of decoder positions now cached."""
        s = min(self.config.src_len, window.size(1))
        self.cache_memory(self.encode(window[:, :s]))
        tgt = window[:, s - 1:]
        return self.lm_head(self.decode(tgt, start_pos=0)[:, -1:]), tgt.size(1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens; greedy at temperature 0. The prompt's last block_size tokens are
        prefilled as forward would read them (source encoded once, the rest into the decoder cache), then each
        step feeds only the newest token to the decoder. When the decoder cache is full (max_decoder_len, the
        most it saw in training) the most recent max(src_len, block_size // 2) tokens are prefilled the same way,
        so generation runs past block_size at constant amortised cost. The caches are freed before returning.
        Bad arguments raise ValueError (check_generate_args)."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        if max_new_tokens == 0:
            return idx
        dev = idx.device.type  # under autocast k/v come out in the autocast dtype: cache them in it
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.lm_head.weight.dtype
        self.setup_cache(idx.size(0), idx.device, dtype)
        keep = max(self.config.src_len, self.config.block_size // 2)
        logits, pos = self.prefill(idx[:, -self.config.block_size:])  # the whole prompt if it fits
        for i in range(max_new_tokens):
            idx_next = sample_next(logits[:, -1, :], temperature, top_k, top_p)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            if i == max_new_tokens - 1:
                break
            if pos == self.max_decoder_len:  # decoder cache full: a new window from the most recent tokens
                logits, pos = self.prefill(idx[:, -keep:])
            else:
                logits = self.lm_head(self.decode(idx_next, start_pos=pos))  # (B, 1, V)
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
