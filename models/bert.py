"""
BERT: a bidirectional Transformer encoder trained by masked language modelling, with RoBERTa's changes.

Papers:
- Devlin et al. 2018, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding"
- Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach"

What changed since the 2017 Transformer (models/transformer.py):
- The encoder alone: one stack of self-attention blocks with no causal mask, no decoder, no cross-attention.
- The objective is the masked LM ("cloze", BERT section 3.1): some input tokens are hidden and predicted from
  the context on both sides, instead of predicting each next token from the left.
- Learned position embeddings instead of sinusoids, plus a segment embedding (sentence A or B), summed with the
  token embedding and normalised by a LayerNorm; no sqrt(d_model) scaling.
- GELU instead of ReLU in the feed-forward network (the exact erf form BERT was trained with; HF's 'gelu').
- Post-LN kept as in 2017: LayerNorm(x + Dropout(Sublayer(x))); dropout 0.1 on attention weights too; eps 1e-12.
- An MLM head: dense + GELU + LayerNorm, then a decoder tied to the word embeddings plus an output-only bias.

What RoBERTa changed, and what this file takes:
- Dynamic masking: a new mask every time a sequence is seen (BERT masked each sequence 10 ways once, at data
  preparation). Here forward draws a new mask on every call in training mode.
- No next-sentence prediction. BERT also classified whether segment B followed segment A; RoBERTa (section 4.2,
  table 2) found that dropping that loss and packing full sentences matches or improves downstream results. Our
  blocks are contiguous windows of text, not sentence pairs, so there is nothing for NSP to learn: no NSP, no
  [CLS] or [SEP], one segment (its embedding is then one constant vector, kept so HF weights load exactly).
- More data, bigger batches, longer training, byte-level BPE: training choices, not in this file.

Why an encoder reads both directions. A left-to-right model must not see the token it predicts, hence the causal
mask. The masked LM removes the predicted tokens from the input instead, so every position may attend to every
other, left and right, in every layer; BERT's ablation (table 5) shows that this beats a left-to-right model of
the same size on understanding tasks. The price: the model defines no next-token distribution, so no KV cache.

The masked LM from the blocks train.py gives every model (model(idx, targets), targets = idx shifted by one):
  targets says that a loss is wanted and which positions may be chosen: position t of idx is eligible where
  targets[:, t] != -1 (train.py's eval_from marks early positions -1; here that removes them from the mask).
  Its values are not used: BERT predicts the ORIGINAL tokens of idx, so at each position the loss compares the
  logits with idx itself. Of the eligible positions each is chosen with probability mask_prob (15%); a chosen
  token becomes [MASK] with probability 80%, a uniformly random token with 10%, and stays with 10%: [MASK] never
  appears when the encoder reads plain text, so the model must keep a useful representation of every input token,
  not only of the [MASK]s (section 3.1, appendix C.2). The loss is the cross-entropy over the chosen positions only.
  [MASK] is id vocab_size, one embedding row beyond the dataset's vocabulary (mask_id), so character and BPE
  datasets work unprepared. It is an input-only token: logits cover the dataset's vocabulary only.
  In training mode the mask comes from torch's global RNG (new every step, restored on resume); in eval mode from
  a generator reseeded with EVAL_MASK_SEED on every call (so every batch of one shape gets the same positions),
  so the same batch gets the same mask at every evaluation and val losses compare across evaluations (train.py
  evaluates the same batches each time); evaluating leaves the global RNG untouched.
  This loss is not comparable with a causal model's: with context on both sides a masked token is easier.

Generation (the one documented exception to the cached-decoding rule, Model.incremental = False): a bidirectional
encoder changes every position's state when a token is appended, so nothing can be cached. generate appends
[MASK], predicts it, replaces it by the choice, and repeats, re-encoding the window (the last block_size tokens,
the [MASK] included) every step: a full forward over up to block_size tokens per new token. fill(idx) fills
[MASK]s inside a text. setup_cache/free_cache are no-ops, so the shared interface holds.

Interface (shared by every file in models/): Config, Model(config), Model.forward(idx, targets=None) -> (logits, loss),
Model.generate(idx, max_new_tokens, temperature, top_k, top_p) (not incremental, above), Model.flops_per_token();
here also Model.fill(idx, ...), model.mask_id, Model.incremental = False.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

EVAL_MASK_SEED = 1234  # the eval-mode mask: the same positions and replacements at every evaluation

# ----------------------------------------------------------------------------------------------------------------
# Norm


def layer_norm(n_embd):
    # BERT's TensorFlow code uses eps 1e-12 (HF's layer_norm_eps); it matters only for near-constant vectors.
    return nn.LayerNorm(n_embd, eps=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Attention


class SelfAttention(nn.Module):
    """Multi-head self-attention with no mask: every position sees every position, both directions."""

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # W^Q, W^K, W^V packed: one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.dropout)  # on the attention weights, as BERT: SDPA's dropout_p

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout.p if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.c_proj(y)


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = config.ffn_hidden or 4 * config.n_embd  # BERT: 4H (3072 for H = 768)
        self.c_fc = nn.Linear(config.n_embd, hidden)
        self.c_proj = nn.Linear(hidden, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))  # the exact (erf) GELU of BERT's checkpoints, not GPT-2's tanh form


# ----------------------------------------------------------------------------------------------------------------
# Block


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = SelfAttention(config)
        self.ln_1 = layer_norm(config.n_embd)
        self.mlp = MLP(config)
        self.ln_2 = layer_norm(config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.ln_1(x + self.drop(self.attn(x)))  # post-LN residual, as 2017
        x = self.ln_2(x + self.drop(self.mlp(x)))
        return x


# ----------------------------------------------------------------------------------------------------------------
# Masked-LM head


class MLMHead(nn.Module):
    """BERT's masked-LM head: h -> LayerNorm(GELU(dense(h))) -> h E^T + b, with E the word embeddings (tied, the
    [MASK] row left out: it is never a target) and b an output-only bias."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd)
        self.ln = layer_norm(config.n_embd)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x, wte):
        return F.linear(self.ln(F.gelu(self.dense(x))), wte[: self.bias.size(0)], self.bias)  # (B, T, V)


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    block_size: int = 512  # BERT's max_position_embeddings
    vocab_size: int = 50304  # the dataset's vocabulary; [MASK] is id vocab_size (one more embedding row)
    n_layer: int = 12  # L (BERT-base: L 12, H 768, A 12)
    n_head: int = 12  # A
    n_embd: int = 768  # H
    ffn_hidden: int | None = None  # None: 4 * n_embd, BERT's ratio
    dropout: float = 0.1  # BERT: 0.1 on every layer's outputs and on the attention weights
    mask_prob: float = 0.15  # share of (eligible) positions chosen for prediction
    mask_replace: float = 0.8  # of the chosen: share replaced by [MASK]
    mask_random: float = 0.1  # of the chosen: share replaced by a random token; the rest stay as they are
    grad_checkpoint: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute


# ----------------------------------------------------------------------------------------------------------------
# Model


class Model(nn.Module):
    incremental = False  # generate re-encodes its window every step (module docstring); no cache to check

    def __init__(self, config: Config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
        if not 0 < config.mask_prob <= 1:
            raise ValueError(f"mask_prob ({config.mask_prob}) must be in (0, 1]; BERT uses 0.15")
        if min(config.mask_replace, config.mask_random) < 0 or config.mask_replace + config.mask_random > 1:
            raise ValueError(f"mask_replace ({config.mask_replace}) and mask_random ({config.mask_random}) must be "
                             f">= 0 with a sum <= 1; BERT uses 0.8 and 0.1")
        self.config = config
        self.mask_id = config.vocab_size
        self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)  # token embeddings; the last row is [MASK]
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned position embeddings
        self.segment = nn.Parameter(torch.zeros(config.n_embd))  # segment A's embedding: one segment, one vector
        self.ln_e = layer_norm(config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.head = MLMHead(config)

        # BERT: normal(0, 0.02) weights (truncated in the TF code), zero biases, LayerNorm 1 and 0.
        self.apply(self._init_weights)
        nn.init.normal_(self.segment, mean=0.0, std=0.02)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def mask_tokens(self, idx, targets=None):
        """The masked LM's input and labels for idx (B, T): (idx with the chosen positions corrupted 80/10/10,
        labels = idx at the chosen positions and -1 elsewhere). Positions where targets is -1 are never chosen."""
        cfg = self.config
        gen = None if self.training else torch.Generator(device=idx.device).manual_seed(EVAL_MASK_SEED)
        u = torch.rand((2, *idx.shape), generator=gen, device=idx.device)  # (2, B, T): choose, then corrupt
        random_ids = torch.randint(cfg.vocab_size, idx.shape, generator=gen, device=idx.device)  # never [MASK]
        chosen = u[0] < cfg.mask_prob
        if targets is not None:
            chosen &= targets != -1
        to_mask = chosen & (u[1] < cfg.mask_replace)
        to_random = chosen & ~to_mask & (u[1] < cfg.mask_replace + cfg.mask_random)
        x = torch.where(to_mask, self.mask_id, torch.where(to_random, random_ids, idx))
        return x, torch.where(chosen, idx, -1)

    def forward(self, idx, targets=None):
        """idx (B, T) -> (logits (B, T, vocab_size), loss). Without targets: the encoder over idx as given (it may
        hold mask_id). With targets: the masked LM of the module docstring; logits are those of the masked input."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        labels = None
        if targets is not None:
            idx, labels = self.mask_tokens(idx, targets)
        self.loss_targets = labels  # what the logits are scored against (-1: not scored): train.py's label smoothing
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.drop(self.ln_e(self.wte(idx) + self.segment + self.wpe(pos)))  # (B, T, C)
        for block in self.h:  # grad_checkpoint: keep each block's input only, recompute its activations in backward
            x = checkpoint(block, x, use_reentrant=False) if self.config.grad_checkpoint and self.training else block(x)
        logits = self.head(x, self.wte.weight)  # (B, T, V)
        loss = None
        if labels is not None:
            # Mean over the chosen positions; a batch with none chosen (only tiny ones) gives 0, not 0/0.
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=-1,
                                   reduction="sum") / labels.ne(-1).sum().clamp(min=1)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count; position and segment embeddings are not counted by default (they do no matmul work).
        The token embedding is counted: it is tied to the MLM decoder, which does."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() - self.segment.numel() if non_embedding else n

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 * L * C * T. Every position
        attends to all T (no causal saving to ignore) and the MLM head runs on every position, as in HF's."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    # ------------------------------------------------------------------------------------------------------------
    # Generate

    def setup_cache(self, batch_size, device, dtype):
        """A no-op: a bidirectional encoder has no cache (module docstring). Kept so the shared interface holds."""

    def free_cache(self):
        """A no-op, as setup_cache."""

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        """Extend idx (B, T) by max_new_tokens; greedy at temperature 0. Not incremental: each step encodes the
        window [last block_size - 1 tokens, [MASK]] from scratch and samples the [MASK] position, so a step costs a
        full forward over up to block_size tokens. Bad arguments raise ValueError (check_generate_args)."""
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)
        mask = idx.new_full((idx.size(0), 1), self.mask_id)
        keep = self.config.block_size - 1  # the [MASK] takes the last position of the window
        for _ in range(max_new_tokens):
            window = torch.cat((idx[:, max(0, idx.size(1) - keep):], mask), dim=1)  # (B, <= block_size)
            logits, _ = self(window)
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k, top_p)), dim=1)
        return idx

    @torch.no_grad()
    def fill(self, idx, temperature=0.0, top_k=None, top_p=None):
        """Replace every mask_id in idx (B, T) by a token; greedy at temperature 0 (the default), else sampled as
        generate samples. Left to right, one position per encoder pass, so each filled token is seen when the
        next one is predicted ("[MASK][MASK][MASK]" becomes a word, not three independent guesses); masks not yet
        filled stay [MASK], as in training. Each pass reads a block_size window around the position (centred
        where the text allows), so a text of any length can be filled. Returns a new tensor."""
        check_generate_args(idx, 0, temperature, top_k, top_p)
        idx, T, W = idx.clone(), idx.size(1), self.config.block_size
        for t in (idx == self.mask_id).any(dim=0).nonzero().flatten().tolist():  # columns holding a [MASK]
            start = min(max(0, t - W // 2), max(0, T - W))
            logits, _ = self(idx[:, start:start + W])
            choice = sample_next(logits[:, t - start, :], temperature, top_k, top_p)[:, 0]  # (B,)
            idx[:, t] = torch.where(idx[:, t] == self.mask_id, choice, idx[:, t])  # rows without a mask keep theirs
        return idx

    # ------------------------------------------------------------------------------------------------------------
    # Hugging Face weights (transformers' BertForMaskedLM): pure tensor renaming, no transformers import here.
    # Its vocabulary is ours plus [MASK] (last row). [MASK] is input-only here, so the twin's output bias is -inf
    # there: its logit is -inf, its probability 0, and logits and losses equal ours over the real tokens.

    _hf_names = {"wte.weight": "bert.embeddings.word_embeddings.weight",
                 "wpe.weight": "bert.embeddings.position_embeddings.weight",
                 "ln_e.weight": "bert.embeddings.LayerNorm.weight", "ln_e.bias": "bert.embeddings.LayerNorm.bias",
                 "head.dense.weight": "cls.predictions.transform.dense.weight",
                 "head.dense.bias": "cls.predictions.transform.dense.bias",
                 "head.ln.weight": "cls.predictions.transform.LayerNorm.weight",
                 "head.ln.bias": "cls.predictions.transform.LayerNorm.bias"}
    _hf_layer = {"attn.c_proj": "attention.output.dense", "ln_1": "attention.output.LayerNorm",
                 "mlp.c_fc": "intermediate.dense", "mlp.c_proj": "output.dense", "ln_2": "output.LayerNorm"}

    @classmethod
    def _hf_map(cls, n_layer):
        """{our name: HF name} for every tensor that is a plain rename."""
        names = dict(cls._hf_names)
        for i in range(n_layer):
            for ours, hf in cls._hf_layer.items():
                for w in ("weight", "bias"):
                    names[f"h.{i}.{ours}.{w}"] = f"bert.encoder.layer.{i}.{hf}.{w}"
        return names

    @classmethod
    def from_hf_state_dict(cls, sd, config):
        """Load BertForMaskedLM weights whose vocabulary is config.vocab_size + 1, [MASK] last (a pretrained BERT
        keeps [MASK] elsewhere, id 103 in bert-base-uncased: move that row last first)."""
        model = cls(config)
        ours = {k: sd[hf] for k, hf in cls._hf_map(config.n_layer).items()}
        ours["wpe.weight"] = ours["wpe.weight"][: config.block_size]
        ours["segment"] = sd["bert.embeddings.token_type_embeddings.weight"][0]  # segment A
        ours["head.bias"] = sd["cls.predictions.bias"][: config.vocab_size]  # [MASK]'s output bias is unused
        for i in range(config.n_layer):
            p = f"bert.encoder.layer.{i}.attention.self."
            for w in ("weight", "bias"):
                ours[f"h.{i}.attn.c_attn.{w}"] = torch.cat([sd[p + n + "." + w] for n in ("query", "key", "value")])
        model.load_state_dict(ours)
        return model

    def to_hf(self):
        """(config class, config kwargs, model class, state dict) for the same network in transformers."""
        cfg = self.config
        kwargs = dict(vocab_size=cfg.vocab_size + 1, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                      num_attention_heads=cfg.n_head, intermediate_size=cfg.ffn_hidden or 4 * cfg.n_embd,
                      hidden_act="gelu", hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                      max_position_embeddings=cfg.block_size, type_vocab_size=1, layer_norm_eps=1e-12,
                      pad_token_id=None)  # BERT's default pad id 0 would zero the gradient of token 0's embedding
        sd = self.state_dict()
        hf = {h: sd[k] for k, h in self._hf_map(cfg.n_layer).items()}
        hf["bert.embeddings.token_type_embeddings.weight"] = sd["segment"][None]  # (1, C)
        bias = torch.cat([sd["head.bias"], sd["head.bias"].new_full((1,), -math.inf)])  # [MASK] never predicted
        hf["cls.predictions.bias"] = hf["cls.predictions.decoder.bias"] = bias  # tied in BertForMaskedLM
        hf["cls.predictions.decoder.weight"] = sd["wte.weight"]  # tied to the word embeddings
        for i in range(cfg.n_layer):
            for w in ("weight", "bias"):
                q, k, v = sd[f"h.{i}.attn.c_attn.{w}"].chunk(3)
                for n, t in (("query", q), ("key", k), ("value", v)):
                    hf[f"bert.encoder.layer.{i}.attention.self.{n}.{w}"] = t
        return "BertConfig", kwargs, "BertForMaskedLM", hf

    def hf_inputs(self, idx, targets):
        """bench.py's transformers twin trains on the same task: forward's masking (dynamic in training mode) gives
        BertForMaskedLM's input_ids, and the labels align with its logits (-1 = not chosen)."""
        if targets is None:
            return dict(input_ids=idx), None
        x, labels = self.mask_tokens(idx, targets)
        return dict(input_ids=x), labels


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
