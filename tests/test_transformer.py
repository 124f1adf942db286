"""Tests for models/transformer.py: parity of the encoder-decoder body with torch.nn.Transformer, the paper's
sinusoids, which positions the loss covers, the plain cross-entropy in both modes (label smoothing is train.py's,
tested there), and cached generation == a full-forward greedy loop (including the new windows past block_size).

Parity and cached-vs-full comparisons run in float64 with bounds near float64 rounding (a float32 bound such as
1e-5 depends on the CPU's summation order); one float32 smoke check of the parity remains."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models.transformer
from conftest import rel_diff, tokens
from models.transformer import Config, Model, sinusoidal_encoding

TINY = dict(vocab_size=61, block_size=16, src_len=6, d_model=32, n_head=4, d_ff=64,
            n_encoder_layer=2, n_decoder_layer=2)


TIGHT = 1e-12  # float64, relative to the scale of what is compared: measured 4e-16 .. 3e-15


def tiny_model(seed=0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    cfg = Config(**{**TINY, "dropout": 0.0, **overrides})
    return Model(cfg).eval().to(dtype)


def randomize_(model, std=0.3):
    """Random values for every parameter (LayerNorm gains/biases and Linear biases start at 1/0), so parity and
    greedy-decoding comparisons are not helped by trivial weights or flat logits. Not conftest's scale_up: the
    global RNG, LayerNorm gains 1 + std * N(0, 1) (its norms are named ln_), the numbers these tests were set on."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + std * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def reference_transformer(model):
    """torch.nn.Transformer with our weights (its in_proj packs [W^Q; W^K; W^V]), no dropout, post-LN, ReLU."""
    cfg = model.config
    ref = nn.Transformer(d_model=cfg.d_model, nhead=cfg.n_head, num_encoder_layers=cfg.n_encoder_layer,
                         num_decoder_layers=cfg.n_decoder_layer, dim_feedforward=cfg.d_ff, dropout=0.0,
                         activation="relu", batch_first=True, norm_first=False).to(model.lm_head.weight.dtype)

    def load_attn(dst, src):
        dst.in_proj_weight.copy_(torch.cat([src.w_q.weight, src.w_k.weight, src.w_v.weight]))
        dst.in_proj_bias.copy_(torch.cat([src.w_q.bias, src.w_k.bias, src.w_v.bias]))
        dst.out_proj.weight.copy_(src.w_o.weight)
        dst.out_proj.bias.copy_(src.w_o.bias)

    def load(dst, src):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)

    with torch.no_grad():
        for r, ours in zip(ref.encoder.layers, model.encoder):
            load_attn(r.self_attn, ours.self_attn)
            load(r.linear1, ours.ffn.w_1), load(r.linear2, ours.ffn.w_2)
            load(r.norm1, ours.ln_1), load(r.norm2, ours.ln_2)
        for r, ours in zip(ref.decoder.layers, model.decoder):
            load_attn(r.self_attn, ours.self_attn)
            load_attn(r.multihead_attn, ours.cross_attn)
            load(r.linear1, ours.ffn.w_1), load(r.linear2, ours.ffn.w_2)
            load(r.norm1, ours.ln_1), load(r.norm2, ours.ln_2), load(r.norm3, ours.ln_3)
        # nn.Transformer always ends each stack with one more LayerNorm; randomise them so the test below shows
        # they are exactly the difference from the paper's stacks (which end with the last sub-layer's norm).
        for norm in (ref.encoder.norm, ref.decoder.norm):
            norm.weight.copy_(1.0 + 0.3 * torch.randn_like(norm.weight))
            norm.bias.copy_(0.3 * torch.randn_like(norm.bias))
    return ref.eval()


def body_diffs(dtype):
    """Max relative diffs of ours against nn.Transformer: encoder, decoder, and both with its final norms."""
    model = randomize_(tiny_model(dtype=dtype))
    ref = reference_transformer(model)
    torch.manual_seed(1)
    src = torch.randint(0, 61, (3, 6))
    tgt = torch.randint(0, 61, (3, 11))
    mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(1))
    with torch.no_grad():
        x_src, x_tgt = model.embed(src), model.embed(tgt)
        memory = model.encode(src)
        ours = model.decode(tgt, memory)
        # The paper's stacks: the reference without its extra final norms.
        final_norms = (ref.encoder.norm, ref.decoder.norm)
        ref.encoder.norm = ref.decoder.norm = None
        ref_memory = ref.encoder(x_src)
        ref_out = ref(x_src, x_tgt, tgt_mask=mask, tgt_is_causal=True)
        # With nn.Transformer's default final norms: ours equals it once we apply those norms ourselves.
        ref.encoder.norm, ref.decoder.norm = final_norms
        ref_out_normed = ref(x_src, x_tgt, tgt_mask=mask, tgt_is_causal=True)
        ours_normed = ref.decoder.norm(model.decode(tgt, ref.encoder.norm(memory)))
    assert ref_out.dtype == ours.dtype == dtype
    assert rel_diff(ours, ref_out_normed) > 1e-2  # the final norms do change the output
    return [rel_diff(memory, ref_memory), rel_diff(ours, ref_out), rel_diff(ours_normed, ref_out_normed)]


def test_body_matches_torch_nn_transformer():
    diffs = body_diffs(torch.float64)
    print("float64 parity max rel diff (encoder, decoder, with final norms):", diffs)
    assert max(diffs) < TIGHT


def test_body_matches_torch_nn_transformer_float32_smoke():
    """As trained, with a bound that holds on any CPU (summation order differs)."""
    assert max(body_diffs(torch.float32)) < 1e-4


def test_sinusoids_match_paper_formula():
    d = 8
    pe = sinusoidal_encoding(50, d)
    # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)); for d = 8 the divisors are
    # 10000^(0/8) = 1, 10000^(2/8) = 10, 10000^(4/8) = 100, 10000^(6/8) = 1000.
    expected = {
        0: [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
        1: [math.sin(1), math.cos(1), math.sin(0.1), math.cos(0.1),
            math.sin(0.01), math.cos(0.01), math.sin(0.001), math.cos(0.001)],
        7: [math.sin(7), math.cos(7), math.sin(0.7), math.cos(0.7),
            math.sin(0.07), math.cos(0.07), math.sin(0.007), math.cos(0.007)],
        49: [math.sin(49), math.cos(49), math.sin(4.9), math.cos(4.9),
             math.sin(0.49), math.cos(0.49), math.sin(0.049), math.cos(0.049)],
    }
    for pos, row in expected.items():
        torch.testing.assert_close(pe[pos], torch.tensor(row), atol=1e-6, rtol=0)
    # The model adds them after scaling the embedding by sqrt(d_model) (section 3.4).
    model = tiny_model()
    idx = torch.tensor([[3, 5, 7]])
    want = model.embedding.weight[idx] * math.sqrt(32) + sinusoidal_encoding(3, 32)
    torch.testing.assert_close(model.embed(idx), want)


def test_loss_covers_decoder_positions_only():
    model = tiny_model()
    torch.manual_seed(2)
    idx = torch.randint(0, 61, (4, 16))
    targets = torch.randint(0, 61, (4, 16))
    S = model.config.src_len
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 16 - S + 1, 61)
    # Init (std 0.02, tied output layer): nearly flat logits, so the loss is close to ln V.
    assert abs(loss.item() - math.log(61)) < 0.3
    want = F.cross_entropy(logits.reshape(-1, 61), targets[:, S - 1:].reshape(-1))
    torch.testing.assert_close(loss, want)
    # The source part of targets is never scored...
    t2 = targets.clone()
    t2[:, :S - 1] = (t2[:, :S - 1] + 1) % 61
    assert model(idx, t2)[1].item() == loss.item()
    # ...the first decoder target is, and -1 is ignored.
    t3 = targets.clone()
    t3[:, S - 1] = (t3[:, S - 1] + 1) % 61
    assert model(idx, t3)[1].item() != loss.item()
    t4 = targets.clone()
    t4[:, S:] = -1
    torch.testing.assert_close(model(idx, t4)[1], F.cross_entropy(logits[:, 0], targets[:, S - 1]))
    # The decoder is causal and the encoder sees only the source: logits depend on idx[:, :S-1+j+1] only.
    idx2 = idx.clone()
    idx2[:, 10:] = (idx2[:, 10:] + 1) % 61
    torch.testing.assert_close(model(idx2)[0][:, :10 - S + 1], logits[:, :10 - S + 1])


def test_loss_is_plain_cross_entropy_in_both_modes():
    """Label smoothing moved to train.py (its label_smoothing setting): the model's loss is the plain cross-entropy
    over targets[:, S-1:], in training mode as in eval mode, and the Config has no smoothing field left."""
    model = tiny_model()  # dropout 0, so train mode is deterministic
    assert not hasattr(model.config, "label_smoothing")
    torch.manual_seed(3)
    idx = torch.randint(0, 61, (2, 16))
    targets = torch.randint(0, 61, (2, 16))
    S = model.config.src_len
    logits, eval_loss = model.eval()(idx, targets)
    _, train_loss = model.train()(idx, targets)
    plain = F.cross_entropy(logits.reshape(-1, 61), targets[:, S - 1:].reshape(-1))
    torch.testing.assert_close(eval_loss, plain)
    torch.testing.assert_close(train_loss, plain)


def test_dropout_is_active_in_training():
    torch.manual_seed(0)
    model = Model(Config(**TINY, dropout=0.1)).train()
    idx = torch.randint(0, 61, (2, 16))
    a, b = model(idx)[0], model(idx)[0]
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0])


def greedy_reference(model, idx, max_new_tokens):
    """Greedy decoding with full forwards, following generate's rule: each step sees a window idx[:, start:] the
    way forward reads a block (source window[:, :s], decoder window[:, s-1:]). The window starts as the prompt's
    last block_size tokens with s = min(src_len, its length); when its decoder part would exceed block_size -
    src_len + 1 positions, it restarts as the most recent max(src_len, block_size // 2) tokens. Returns the
    tokens and the logits of each step."""
    cfg = model.config
    S, D, keep = cfg.src_len, model.max_decoder_len, max(cfg.src_len, cfg.block_size // 2)
    start = max(0, idx.size(1) - cfg.block_size)
    s = min(S, idx.size(1) - start)
    steps = []
    for _ in range(max_new_tokens):
        if idx.size(1) - start - s + 1 > D:  # the decoder part would not fit: a new window
            start = max(0, idx.size(1) - keep)
            s = min(S, idx.size(1) - start)
        window = idx[:, start:]
        logits = model.lm_head(model.decode(window[:, s - 1:], model.encode(window[:, :s])))[:, -1]  # (B, V)
        if s == S:  # a full source: exactly what forward computes on the window
            assert rel_diff(model(window)[0][:, -1], logits) < TIGHT
        steps.append(logits)
        idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    return idx, torch.stack(steps, dim=1)


@pytest.fixture(scope="module")
def bigram_model():
    """A tiny float64 model trained for a few steps to follow a fixed permutation of the vocabulary
    (next = perm[cur]): random post-LN models with tied embeddings greedily repeat one token, which would prove
    little."""
    model = tiny_model(dtype=torch.float64).train()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(61, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        seq = [torch.randint(0, 61, (8, 1), generator=g)]
        for _ in range(16):
            seq.append(perm[seq[-1]])
        seq = torch.cat(seq, dim=1)
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def record_sampled_logits(monkeypatch, check=None):
    """A list that fills with the logits generate samples from (after its prefills and cached steps); check(logits)
    runs at each of them, while the caches are held."""
    seen, sample_next = [], models.transformer.sample_next

    def recording(logits, *args):
        seen.append(logits)
        if check is not None:
            check(logits)
        return sample_next(logits, *args)
    monkeypatch.setattr(models.transformer, "sample_next", recording)
    return seen


# longer than block_size = 16, between src_len = 6 and block_size, shorter than src_len
@pytest.mark.parametrize("prompt_len", [20, 9, 3])
def test_cached_generation_matches_full_forward_greedy(bigram_model, prompt_len, monkeypatch):
    model = bigram_model
    torch.manual_seed(4)
    prompt = torch.randint(0, 61, (2, prompt_len))
    n = 30  # block_size 16: several new windows (every 8 tokens once the decoder cache is full)
    with torch.no_grad():
        want, want_logits = greedy_reference(model, prompt, n)
    seen = record_sampled_logits(monkeypatch)
    got = model.generate(prompt, n, temperature=0)
    assert got.shape == (2, prompt_len + n)
    assert torch.equal(got, want)
    assert len(set(want[0, prompt_len:].tolist())) > 10  # not a degenerate repeat of one token
    diff = rel_diff(torch.stack(seen, dim=1), want_logits)
    print(f"float64 cached vs full-forward logits max rel diff (prompt {prompt_len}): {diff:.1e}")
    assert seen[0].dtype == torch.float64 and diff < TIGHT


def test_first_token_of_a_long_prompt_is_forward_over_its_last_block():
    """The prompt is not cut to src_len or block_size // 2 before the first token: generation reads its last
    block_size tokens as forward does."""
    model = randomize_(tiny_model(dtype=torch.float64))
    prompt = tokens(3, 23, 61, seed=7)
    first = model.generate(prompt, 1, temperature=0)[:, -1]
    with torch.no_grad():
        logits = model(prompt[:, -16:])[0][:, -1]
    assert torch.equal(first, logits.argmax(-1))
    assert not torch.equal(first, model(prompt[:, -8:])[0][:, -1].argmax(-1))  # the window matters here


def test_caches_hold_the_compute_dtype(monkeypatch):
    """Under bf16 autocast k and v come out in bf16: the KV caches hold bf16 (not the float32 weight dtype)."""
    model = randomize_(tiny_model())

    def check(logits):
        assert all(layer.self_attn.cache_k.dtype == layer.self_attn.cache_v.dtype == torch.bfloat16
                   for layer in model.decoder)
    seen = record_sampled_logits(monkeypatch, check)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(torch.randint(0, 61, (2, 20)), 12, temperature=0)
    assert out.shape == (2, 32) and len(seen) == 12
    assert all(layer.self_attn.cache_k is None for layer in model.decoder)


def test_cached_chunk_matches_full_decode():
    model = randomize_(tiny_model(dtype=torch.float64))
    torch.manual_seed(5)
    src, tgt = torch.randint(0, 61, (2, 6)), torch.randint(0, 61, (2, 11))
    with torch.no_grad():
        memory = model.encode(src)
        full = model.decode(tgt, memory)
        model.setup_cache(2, src.device, torch.float64)
        model.cache_memory(memory)
        # A multi-token chunk after a one-token step exercises the explicit mask of attend_cached.
        parts = [model.decode(tgt[:, :1], start_pos=0), model.decode(tgt[:, 1:7], start_pos=1),
                 model.decode(tgt[:, 7:], start_pos=7)]
        model.free_cache()
    assert rel_diff(torch.cat(parts, dim=1), full) < TIGHT


def test_sampling_shapes_and_options():
    model = tiny_model()
    prompt = torch.randint(0, 61, (3, 20))  # longer than block_size: its last block_size tokens are read
    torch.manual_seed(6)
    out = model.generate(prompt, 12, temperature=0.8, top_k=10, top_p=0.9)
    assert out.shape == (3, 32) and torch.equal(out[:, :20], prompt)
    assert out.min() >= 0 and out.max() < 61
    assert all(layer.self_attn.cache_k is None and layer.cross_attn.memory_k is None for layer in model.decoder)


def test_bad_config_and_lengths_raise():
    with pytest.raises(ValueError, match="divisible"):
        Model(Config(**{**TINY, "n_head": 5}))
    with pytest.raises(ValueError, match="src_len"):
        Model(Config(**{**TINY, "src_len": 16}))
    with pytest.raises(ValueError, match="src_len"):
        Model(Config(**{**TINY, "src_len": 0}))
    model = tiny_model()
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="shorter than src_len"):
        model(torch.zeros(1, 5, dtype=torch.long))
    logits, _ = model(torch.zeros(1, 6, dtype=torch.long))  # T == src_len: one decoder position
    assert logits.shape == (1, 1, 61)


def test_param_count_and_flops():
    model = tiny_model()
    C, F_, V, L = 32, 64, 61, 2
    attn = 4 * (C * C + C)
    ffn = C * F_ + F_ + F_ * C + C
    enc = attn + ffn + 2 * 2 * C
    dec = 2 * attn + ffn + 3 * 2 * C
    assert model.num_params() == L * enc + L * dec + V * C  # the one shared embedding / output matrix
    assert "pe" not in model.state_dict()  # the sinusoids are recomputed, not saved
    T, S, D = 16, 6, 11
    want = (6 * (L * enc * S + (L * dec + V * C) * D) + 12 * C * (L * S * S + L * (D * D + D * S))) / T
    assert model.flops_per_token() == pytest.approx(want)
