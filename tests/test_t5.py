"""Tests for models/t5.py: parity with transformers' T5ForConditionalGeneration (the twin bench.py builds from
to_hf, so its mapping is tested too) for v1.0 and v1.1 choices and both objectives, greedy decoding against its
generate, the relative position buckets, span corruption, cached == full forward, and the Config errors.

Parity runs in float64 with a bound near float64 rounding. transformers' T5LayerNorm accumulates the mean square
in float32 whatever the input dtype (x.to(float32).pow(2).mean()), a float32 round trip that caps a float64
comparison at ~1e-7; these tests replace its forward by the same formula without the cast (reference_norm_exact).
Its eager and SDPA attention both softmax in the input dtype, so nothing else needs changing. One float32 smoke
check runs transformers unpatched."""


import pytest
import torch
import torch.nn.functional as F

import models.t5
from bench import HFTwin
from conftest import full_forward_greedy, rel_diff, scale_up, tokens
from models.t5 import Config, Model, relative_position_bucket, span_counts

V = 61
TINY = dict(vocab_size=V, block_size=24, src_len=8, d_model=32, n_head=4, d_kv=8, d_ff=48, n_encoder_layer=2,
            n_decoder_layer=2, num_buckets=8, max_distance=12)
TIGHT = 1e-12  # float64, relative to the largest logit: measured 7e-16 .. 1.5e-15
VARIANTS = [dict(activation=a, tie_word_embeddings=t, objective=o)
            for a in ("gated-gelu", "relu") for t in (False, True) for o in ("prefix", "span")]


def build(seed=0, dtype=torch.float64, **overrides):
    """A tiny model with seeded weights far from flat logits (norm gains 0.5..1.5, the rest std 0.3; the position
    bias tables std 1 so they move the scores), in eval mode."""
    torch.manual_seed(seed)
    model = Model(Config(**{**TINY, **overrides}))
    return scale_up(model, lambda name: 1.0 if "relative" in name else 0.3, seed).to(dtype)


@pytest.fixture
def reference_norm_exact(monkeypatch):
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    def forward(self, x):  # the reference's formula, with the mean square in x's own dtype
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    monkeypatch.setattr(T5LayerNorm, "forward", forward)


def twin(model):
    return HFTwin(model, torch.device("cpu")).to(model.lm_head.weight.dtype).eval()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_logits_match_transformers_float64(variant, reference_norm_exact):
    model = build(**variant)
    ref = twin(model)
    idx = tokens(3, 24, V)
    with torch.no_grad():
        ours, loss = model(idx, idx)
        theirs, ref_loss = ref(idx, idx)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float64
    diff = rel_diff(ours, theirs)
    print(f"float64 parity max rel diff {variant}: {diff:.1e}")
    assert diff < TIGHT and abs(loss.item() - ref_loss.item()) < 1e-6  # the twin's loss is float32
    # from_hf_state_dict reads transformers' own state dict back to the same model
    back = Model.from_hf_state_dict(ref.hf.state_dict(), model.config).double().eval()
    assert rel_diff(back(idx, idx)[0], ours) < TIGHT
    assert (back.lm_head.weight is back.shared.weight) == variant["tie_word_embeddings"]


def test_logits_match_transformers_float32_smoke():
    """As trained, transformers unpatched (its float32 norm is then no round trip)."""
    model = build(dtype=torch.float32)
    idx = tokens(2, 24, V)
    with torch.no_grad():
        assert rel_diff(model(idx)[0], twin(model)(idx)[0]) < 1e-4


@pytest.mark.parametrize("tie", [False, True])
def test_greedy_decoding_matches_transformers_generate(tie, reference_norm_exact, monkeypatch):
    """HF generate with decoder_input_ids = idx[:, S-1:] as the decoder prompt (bench.py's HFTwin.generate): the
    same tokens, and the same logits at every step, each with a clear winner (no tie-break of flat logits)."""
    model = build(tie_word_embeddings=tie, seed=3)
    prompt = tokens(2, 10, V, seed=3)  # source 8 tokens, decoder prompt 3
    seen = record_sampled_logits(monkeypatch)
    ours = model.generate(prompt, 12, temperature=0)
    ref = twin(model)
    assert torch.equal(ours[:, model.config.src_len - 1:], ref.generate(prompt, 12))
    kwargs, _ = ref.inputs(prompt, None)
    out = ref.hf.generate(**kwargs, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0,
                          decoder_start_token_id=kwargs["decoder_input_ids"][:, 0], output_scores=True,
                          return_dict_in_generate=True)
    ours_logits, theirs_logits = torch.stack(seen, 1), torch.stack(out.scores, 1)
    assert theirs_logits.dtype == torch.float32  # generate casts its scores to float32: a float32 bound here
    assert rel_diff(ours_logits, theirs_logits.double()) < 1e-6
    top2 = ours_logits.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-3


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 12), (64, 256)])
def test_buckets_match_transformers(num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-600, 600)  # key - query
    for bidirectional in (True, False):
        ref = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                                    max_distance=max_distance)
        ours = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
        assert torch.equal(ours, ref)
        assert ours.min() == 0 and ours.max() == num_buckets - 1  # every bucket is reached
    causal = relative_position_bucket(rel, False, 32, 128)
    assert (causal[rel >= 0] == 0).all() and torch.equal(causal[600 - 15:601], torch.arange(15, -1, -1))


def test_position_bias_is_shared_and_masks_the_future():
    model = build()
    with torch.no_grad():
        bias = model.decoder_bias(5, 5)
        assert torch.isinf(bias[0, :, 0, 1:]).all() and torch.isfinite(bias[0, :, 4]).all()
        step = model.decoder_bias(1, 5, start_pos=4)  # the new query only, as in cached decoding
        assert torch.equal(step, bias[:, :, 4:5])
        enc = model.encoder_bias(5, 5)
        assert torch.isfinite(enc).all() and not torch.equal(enc[0, :, 0, 1], enc[0, :, 1, 0])  # both directions
    # one table per stack, none in the layers
    names = [n for n, _ in model.named_parameters() if "relative" in n]
    assert names == ["encoder_bias.relative_attention_bias.weight", "decoder_bias.relative_attention_bias.weight"]


def test_no_scaling_of_q_k():
    """T5 does not divide q.k by sqrt(d_kv): doubling W^Q doubles the scores (checked against a manual softmax)."""
    model = build()
    attn = model.encoder[0].self_attn
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    q, k, v = attn.qkv(x).view(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)
    want = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
    assert rel_diff(attn(x), attn.o(want.transpose(1, 2).reshape(2, 5, 32))) < TIGHT


def test_prefix_loss_covers_decoder_positions_only():
    model = build(dtype=torch.float32)
    idx, targets = tokens(4, 24, V), tokens(4, 24, V, seed=2)
    S = model.config.src_len
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 24 - S + 1, V) and torch.equal(model.loss_targets, targets[:, S - 1:])
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, V), targets[:, S - 1:].reshape(-1)))
    t2 = targets.clone()
    t2[:, :S - 1] = -1  # the source part is never scored
    assert model(idx, t2)[1].item() == loss.item()
    idx2 = idx.clone()
    idx2[:, 15:] = (idx2[:, 15:] + 1) % V  # causal decoder: earlier logits unchanged
    torch.testing.assert_close(model(idx2)[0][:, :15 - S + 1], logits[:, :15 - S + 1])


# ----------------------------------------------------------------------------------------------------------------
# Span corruption


def reconstruct(enc, tgt, V):
    """The original text from the encoder input and the target (each sentinel in enc replaced by its span), and
    which of its positions were dropped."""
    spans, current = {}, None
    for t in tgt.tolist():
        if t >= V:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    pairs = [(t, s >= V) for s in enc.tolist() for t in (spans[s] if s >= V else [s])]
    return [t for t, _ in pairs], [d for _, d in pairs]


def test_span_corruption_properties():
    T = 512
    model = Model(Config(**{**TINY, "block_size": T, "objective": "span"}))
    idx = tokens(64, T, V)
    enc, dec, tgt = model.span_corrupt(idx, torch.Generator().manual_seed(0))
    n_noise, n_spans = span_counts(T, 0.15, 3.0)
    assert (n_noise, n_spans) == (77, 26)  # round(512 * 0.15), round(77 / 3)
    assert enc.shape == (64, T - n_noise + n_spans) and tgt.shape == dec.shape == (64, n_noise + n_spans + 1)
    assert torch.equal(dec[:, 1:], tgt[:, :-1]) and (dec[:, 0] == V + n_spans + 1).all()
    assert model.n_extra == n_spans + 2 and model.shared.weight.size(0) == V + n_spans + 2
    for b in range(64):
        assert reconstruct(enc[b], tgt[b], V)[0] == idx[b].tolist()
        # sentinels in order, beyond the vocabulary, one per span, and the closing one last
        sent = tgt[b][tgt[b] >= V]
        assert torch.equal(sent, V + torch.arange(n_spans + 1)) and tgt[b, -1] == V + n_spans
        assert torch.equal(enc[b][enc[b] >= V], V + torch.arange(n_spans))
        assert enc[b, 0] < V  # T5's masks start with a kept span
    # noise density exact per sequence; span lengths >= 1 with mean n_noise / n_spans = 2.96; their spread is that
    # of a random composition (not all equal): a bound that fails for fixed-length spans
    lengths = torch.cat([torch.nonzero(row >= V).flatten().diff() - 1 for row in tgt])
    assert (tgt < V).sum().item() == 64 * n_noise and lengths.min() >= 1
    assert abs(lengths.float().mean().item() - n_noise / n_spans) < 0.2 and lengths.float().std() > 1.0
    # the spans are spread over the whole sequence: every position but the first is dropped now and then, near
    # the 15% rate on average (4 draws x 64 rows = 256 per position)
    dropped = torch.zeros(T)
    for _ in range(4):
        e, _, t = model.span_corrupt(idx)
        for b in range(64):
            text, flags = reconstruct(e[b], t[b], V)
            assert text == idx[b].tolist()
            dropped += torch.tensor(flags, dtype=torch.float)
    rate = dropped / 256
    assert rate[0] == 0 and rate[1:].min() > 0 and abs(rate[T // 4:3 * T // 4].mean().item() - 0.15) < 0.02


def test_span_mask_random_in_training_fixed_in_eval():
    model = build(objective="span", mean_span_length=2.0, dtype=torch.float32)  # 2 spans (1 would sit at the end)
    idx = tokens(4, 24, V)
    model.train()
    assert model(idx, idx)[1].item() != model(idx, idx)[1].item()  # a new mask each call (dropout is 0)
    model.eval()
    logits, loss = model(idx, idx)
    assert model(idx, torch.full_like(idx, -1))[1].item() == loss.item()  # one mask; targets only ask for a loss
    enc, dec, tgt = model.span_corrupt(idx, torch.Generator().manual_seed(model.config.span_seed))
    assert logits.shape == (4, tgt.size(1), V + model.n_extra)
    assert torch.equal(model.loss_targets, tgt)  # the targets the logits align with, for train.py's smoothing
    torch.testing.assert_close(logits, model.decode(dec, model.encode(enc)))
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), tgt.flatten()))
    assert model.generate(idx[:, :10], 20, temperature=0)[:, 10:].max() < V  # sentinels are never generated


# ----------------------------------------------------------------------------------------------------------------
# Generation


def record_sampled_logits(monkeypatch):
    seen, sample_next = [], models.t5.sample_next

    def recording(logits, *args):
        seen.append(logits)
        return sample_next(logits, *args)
    monkeypatch.setattr(models.t5, "sample_next", recording)
    return seen


@pytest.mark.parametrize("prompt_len", [30, 13, 5])  # longer than block_size, between src_len and it, shorter
def test_cached_generation_equals_full_forward(prompt_len, monkeypatch):
    """Every step's logits equal a full forward over the window generate reads (float64); with a full source the
    window is what forward computes. Runs past several decoder-cache refills."""
    model = build(seed=2)
    cfg = model.config
    S, D, keep = cfg.src_len, model.max_decoder_len, max(cfg.src_len, cfg.block_size // 2)
    prompt = tokens(2, prompt_len, V, seed=4)
    seen = record_sampled_logits(monkeypatch)
    out = model.generate(prompt, 40, temperature=0)
    idx, start = prompt, max(0, prompt_len - cfg.block_size)
    s = min(S, prompt_len - start)
    with torch.no_grad():
        for i, logits in enumerate(seen):
            if idx.size(1) - start - s + 1 > D:
                start = max(0, idx.size(1) - keep)
                s = min(S, idx.size(1) - start)
            window = idx[:, start:]
            want = model.decode(window[:, s - 1:], model.encode(window[:, :s]))[:, -1]
            if s == S:
                assert rel_diff(model(window)[0][:, -1], want) < TIGHT
            assert rel_diff(logits, want) < TIGHT, f"step {i}"
            idx = torch.cat([idx, want.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def test_cached_chunks_match_full_decode():
    model = build()
    src, tgt = tokens(2, 8, V), tokens(2, 15, V, seed=5)
    with torch.no_grad():
        memory = model.encode(src)
        full = model.decode(tgt, memory)
        model.setup_cache(2, src.device, torch.float64)
        for layer in model.decoder:
            layer.cross_attn.cache_memory(memory)
        parts = [model.decode(tgt[:, :1], start_pos=0), model.decode(tgt[:, 1:9], start_pos=1),
                 model.decode(tgt[:, 9:], start_pos=9)]
        model.free_cache()
    assert rel_diff(torch.cat(parts, dim=1), full) < TIGHT
    assert torch.equal(full_forward_greedy(model, tokens(1, 10, V), 3)[:, :10], tokens(1, 10, V))


# ----------------------------------------------------------------------------------------------------------------
# Config errors


@pytest.mark.parametrize("overrides,words", [
    (dict(src_len=24), "src_len .* < block_size"), (dict(src_len=0), "src_len"),
    (dict(noise_density=0.0), r"noise_density .* \(0, 1\)"), (dict(noise_density=1.0), "noise_density"),
    (dict(noise_density=0.9, mean_span_length=1.0), "lower the density"),
    (dict(mean_span_length=0.5), "mean_span_length"), (dict(activation="swiglu"), "activation"),
    (dict(objective="mlm"), "objective"), (dict(num_buckets=64, max_distance=12), "num_buckets")])
def test_config_errors(overrides, words):
    with pytest.raises(ValueError, match=words):
        Model(Config(**{**TINY, **overrides}))


def test_flops_per_token_counts_both_stacks():
    model = build()
    c = model.config
    S, D = c.src_len, c.block_size - c.src_len + 1
    p_enc = sum(p.numel() for p in model.encoder.parameters())
    p_dec = sum(p.numel() for p in model.decoder.parameters())
    want = (6 * (p_enc * S + (p_dec + V * 32) * D) + 12 * 32 * (2 * S * S + 2 * (D * D + D * S))) / c.block_size
    assert model.flops_per_token() == want
    assert build(objective="span").flops_per_token() != want
