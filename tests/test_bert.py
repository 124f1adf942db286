"""models/bert.py against Hugging Face transformers' BertForMaskedLM, its masked-LM objective, non-incremental
generation, fill(), and sample.py's fill-mask use."""

import math

import pytest
import torch
import transformers

from conftest import TINY, rel_diff, run, sharpen, tokens
from models.bert import Config, Model

V = 97
CFG = dict(block_size=32, vocab_size=V, n_layer=2, n_head=4, n_embd=32, ffn_hidden=64, dropout=0.0)


def randomize(model, std=0.2, seed=0):
    """Seeded weights far from the init (LayerNorm gains 0.5..1.5, the rest normal with std), so logits are not
    flat and every tensor, output bias included, matters in the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.5 + torch.rand(p.shape, generator=g) if "LayerNorm.weight" in name
                    else torch.randn(p.shape, generator=g) * std)
    return model.eval()


def hf_and_ours(dtype):
    """An HF BertForMaskedLM with vocabulary V + 1 ([MASK] last) and two segment rows (as pretrained BERT), and
    ours loaded from its weights (segment A = row 0, which HF uses when token_type_ids are not given)."""
    hf_cfg = transformers.BertConfig(vocab_size=V + 1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, type_vocab_size=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=None)
    torch.manual_seed(0)
    hf = randomize(transformers.BertForMaskedLM(hf_cfg)).to(dtype)
    ours = Model.from_hf_state_dict(hf.state_dict(), Config(**CFG)).eval().to(dtype)
    return hf, ours


def hf_twin(model):
    cfg_cls, kwargs, model_cls, sd = model.to_hf()
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kwargs)).eval()
    hf.load_state_dict(sd)
    return hf.to(model.wte.weight.dtype)


# Parity in float64 (see tests/test_gpt2.py): HF's default SDPA attention runs the same math kernel in float64.
def test_logits_match_hf_loaded_from_hf_weights_float64():
    hf, ours = hf_and_ours(torch.float64)
    idx = tokens(3, 32, V + 1)  # the [MASK] id among the inputs too
    with torch.no_grad():
        logits, ref = ours(idx)[0], hf(idx).logits
    assert logits.dtype == ref.dtype == torch.float64 and logits.shape == (3, 32, V) and ref.shape == (3, 32, V + 1)
    diff = rel_diff(logits, ref[..., :V])  # ours predicts the real tokens only; [MASK] is input-only
    print(f"bert vs HF float64 logits max rel diff {diff:.3g}")
    assert diff < 1e-12, diff


def test_logits_match_hf_float32_smoke():
    """The one float32 check: loose enough (1e-4 of the logit scale) to hold on any CPU."""
    hf, ours = hf_and_ours(torch.float32)
    idx = tokens(3, 32, V + 1)
    with torch.no_grad():
        assert rel_diff(ours(idx)[0], hf(idx).logits[..., :V]) < 1e-4


def test_to_hf_roundtrip_and_mlm_loss_match_hf_on_a_fixed_mask():
    """The twin from to_hf() computes our logits (its [MASK] logit is -inf) and, given our masked input and HF labels
    (the original ids at the chosen positions, -100 elsewhere), our loss; bench.py's hf_inputs gives the same."""
    _, ours = hf_and_ours(torch.float64)
    hf = hf_twin(ours)
    idx = tokens(4, 32, V, seed=3)
    x, labels = ours.mask_tokens(idx, idx)  # eval mode: the fixed mask forward also draws
    assert (labels != -1).sum() > 10 and (x == ours.mask_id).any()
    with torch.no_grad():
        logits, loss = ours(idx, idx)
        out = hf(input_ids=x, labels=labels.masked_fill(labels == -1, -100))
        plain = ours(x)[0]
    assert torch.isneginf(out.logits[..., V]).all()
    diff = rel_diff(logits, out.logits[..., :V])
    print(f"bert vs HF twin float64 logits max rel diff {diff:.3g}, loss diff {abs(loss - out.loss).item():.3g}")
    assert diff < 1e-12 and torch.equal(logits, plain)  # forward's logits are those of the masked input
    assert abs(loss.item() - out.loss.item()) < 1e-12 * out.loss.item()
    kwargs, hf_labels = ours.hf_inputs(idx, idx)
    assert torch.equal(kwargs["input_ids"], x) and torch.equal(hf_labels, labels)
    assert ours.hf_inputs(idx, None)[1] is None


def masked_stats(model, idx, targets=None):
    """Shares observed in one mask_tokens call: chosen of eligible; of the chosen, [MASK], changed, unchanged."""
    x, labels = model.mask_tokens(idx, idx if targets is None else targets)
    chosen = labels != -1
    n = chosen.sum().item()
    masked = (chosen & (x == model.mask_id)).sum().item() / n
    changed = (chosen & (x != model.mask_id) & (x != idx)).sum().item() / n
    kept = (chosen & (x == idx)).sum().item() / n
    return x, labels, chosen, dict(rate=chosen.float().mean().item(), masked=masked, changed=changed, kept=kept)


def test_masking_rates_15_percent_and_80_10_10():
    """100,000 positions: each share within 5 standard deviations (binomial) of BERT's 15% and 80/10/10. A
    random replacement equal to the original (1 in 1000 here) counts as kept."""
    model = Model(Config(block_size=500, vocab_size=1000, n_layer=1, n_head=1, n_embd=8)).train()
    torch.manual_seed(0)
    idx = torch.randint(0, 1000, (200, 500))
    x, labels, chosen, s = masked_stats(model, idx)
    n = chosen.sum().item()
    sd = lambda p, m: 5 * math.sqrt(p * (1 - p) / m)  # noqa: E731
    assert abs(s["rate"] - 0.15) < sd(0.15, idx.numel()), s
    for key, p in (("masked", 0.8), ("changed", 0.0999), ("kept", 0.1001)):
        assert abs(s[key] - p) < sd(p, n), (key, s)
    assert torch.equal(x[~chosen], idx[~chosen]) and torch.equal(labels[chosen], idx[chosen])
    # random replacements are real tokens spread over the whole vocabulary, never [MASK]
    rand = x[chosen & (x != model.mask_id) & (x != idx)]
    assert rand.max() < 1000 and len(rand.unique()) > 800
    # other rates are honoured too
    model2 = Model(Config(block_size=500, vocab_size=1000, n_layer=1, n_head=1, n_embd=8, mask_prob=0.4,
                          mask_replace=0.5, mask_random=0.0)).train()
    s2 = masked_stats(model2, idx)[3]
    assert abs(s2["rate"] - 0.4) < 0.01 and abs(s2["masked"] - 0.5) < 0.02 and s2["changed"] == 0


def test_loss_covers_chosen_positions_only_and_respects_ignored_targets():
    torch.manual_seed(0)
    model = sharpen(Model(Config(**CFG)), 3.0).train()
    idx = tokens(8, 32, V)
    targets = torch.roll(idx, -1, dims=1)  # what train.py passes: only -1 matters
    targets[:, :20] = -1  # train.py's eval_from: these positions are never chosen
    torch.manual_seed(5)
    logits, loss = model(idx, targets)
    torch.manual_seed(5)
    x, labels = model.mask_tokens(idx, targets)  # the same draw
    assert torch.equal(model.loss_targets, labels)  # what the logits are scored against (train.py's smoothing)
    chosen = labels != -1
    assert not chosen[:, :20].any() and chosen[:, 20:].any()
    ref = torch.nn.functional.cross_entropy(logits[chosen], idx[chosen])  # the original tokens, chosen positions
    assert abs(loss.item() - ref.item()) < 1e-6
    # the loss does not depend on what the model says at the other positions: their logits get no gradient
    logits.retain_grad()
    loss.backward()
    assert logits.grad[~chosen].abs().max() == 0 and logits.grad[chosen].abs().max() > 0


def test_dynamic_masking_in_training_fixed_mask_in_eval():
    torch.manual_seed(0)
    model = Model(Config(**CFG))
    idx = tokens(4, 32, V)
    model.train()
    a, b = model.mask_tokens(idx, idx), model.mask_tokens(idx, idx)
    assert not torch.equal(a[1], b[1])  # a new mask each step (RoBERTa)
    model.eval()
    state = torch.get_rng_state()
    (xa, la), (xb, lb) = model.mask_tokens(idx, idx), model.mask_tokens(idx, idx)
    assert torch.equal(xa, xb) and torch.equal(la, lb)
    assert model(idx, idx)[1].item() == model(idx, idx)[1].item()  # evaluations compare
    assert torch.equal(torch.get_rng_state(), state)  # evaluating does not move training's random stream


def test_mask_id_is_reserved_beyond_the_vocabulary():
    for vocab in (65, 50257):
        model = Model(Config(block_size=16, vocab_size=vocab, n_layer=1, n_head=2, n_embd=8))
        assert model.mask_id == vocab and model.wte.weight.shape == (vocab + 1, 8)
        idx = torch.full((1, 16), vocab)  # all [MASK]
        assert model(idx)[0].shape == (1, 16, vocab)  # [MASK] is an input; it is never predicted


def greedy_window_loop(model, idx, n):
    """generate's definition, by hand: each step encodes the last block_size - 1 tokens plus [MASK] and takes the
    argmax at the [MASK]."""
    for _ in range(n):
        window = torch.cat((idx[:, -(model.config.block_size - 1):], torch.full_like(idx[:, :1], model.mask_id)), 1)
        logits, _ = model(window)
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


def test_generate_re_encodes_the_window_each_step():
    torch.manual_seed(2)
    model = sharpen(Model(Config(**CFG)), 8.0).double().eval()  # far from flat: varied greedy tokens
    prompt = tokens(2, 40, V)  # longer than block_size: windows from the start
    out = model.generate(prompt, 30, temperature=0)
    assert torch.equal(out, greedy_window_loop(model, prompt, 30))
    assert len(set(out[0, 40:].tolist())) > 2  # not one repeated token
    short = model.generate(prompt[:, :3], 5, temperature=0)
    assert torch.equal(short, greedy_window_loop(model, prompt[:, :3], 5))


def test_fill_left_to_right():
    torch.manual_seed(2)
    model = sharpen(Model(Config(**CFG)), 8.0).double().eval()  # far from flat: varied greedy tokens
    M = model.mask_id
    idx = tokens(2, 20, V)
    idx[0, [3, 4, 5, 12]] = M
    idx[1, 7] = M
    out = model.fill(idx)
    assert (out != M).all() and out.max() < V
    assert torch.equal(out[idx != M], idx[idx != M])  # only masks change
    # by hand: columns 3, 4, 5, 7, 12 in order, each one forward with the earlier ones filled
    ref = idx.clone()
    for t in (3, 4, 5, 7, 12):
        pred = model(ref)[0][:, t].argmax(-1)
        ref[:, t] = torch.where(ref[:, t] == M, pred, ref[:, t])
    assert torch.equal(out, ref)
    # a text longer than block_size: each mask reads the block_size window around it (clipped to the text); each
    # of these windows holds no other mask, so it is read from the unfilled text
    long = tokens(1, 80, V)
    long[0, [2, 40, 79]] = M
    filled = model.fill(long)
    assert (filled != M).all()
    for t, start in ((2, 0), (40, 24), (79, 48)):
        assert filled[0, t] == model(long[:, start:start + 32])[0][0, t - start].argmax()
    with pytest.raises(ValueError, match="temperature"):
        model.fill(idx, temperature=-1)


def test_fill_recovers_a_learned_pattern():
    """A few steps of the masked LM on a repeating text: then fill puts back the masked letters."""
    torch.manual_seed(0)
    model = Model(Config(block_size=16, vocab_size=5, n_layer=1, n_head=2, n_embd=32, dropout=0.0))
    seq = torch.arange(16) % 5
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        batch = (seq + torch.randint(0, 5, (32, 1))) % 5  # (32, 16): the pattern at every phase
        _, loss = model(batch, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert model(batch, batch)[1].item() < 0.3  # from ln 5 = 1.61
    text = seq.clone()[None]
    text[0, [6, 7, 8]] = model.mask_id
    assert torch.equal(model.fill(text), seq[None])


def test_config_errors_are_value_errors():
    for kwargs, word in ((dict(n_embd=30, n_head=4), "divisible"), (dict(mask_prob=0.0), "mask_prob"),
                         (dict(mask_replace=0.95, mask_random=0.1), "mask_replace"),
                         (dict(mask_random=-0.1), "mask_random")):
        with pytest.raises(ValueError, match=word):
            Model(Config(**{**CFG, **kwargs}))
    with pytest.raises(ValueError, match="block_size"):
        Model(Config(**CFG))(torch.zeros(1, 33, dtype=torch.long))


def test_loss_at_init_is_about_ln_vocab_and_cache_is_a_no_op():
    torch.manual_seed(0)
    model = Model(Config(**CFG))
    _, loss = model(tokens(8, 32, V), tokens(8, 32, V))
    assert abs(loss.item() - math.log(V)) < 0.1
    assert Model.incremental is False
    model.setup_cache(2, torch.device("cpu"), torch.float32)
    model.free_cache()


def test_flops_per_token():
    model = Model(Config(**CFG))
    n = sum(p.numel() for p in model.parameters()) - 32 * 32 - 32  # without position and segment embeddings
    assert model.flops_per_token() == 6 * n + 12 * 2 * 32 * 32


# ----------------------------------------------------------------------------------------------------------------
# sample.py: [MASK] markers in --start


BERT = ["--model=bert", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--dropout=0.0",
        "--max_iters=10", "--eval_interval=10", "--lr_decay_iters=10"]


def test_sample_fills_mask_markers(workdir):
    run("train.py", *TINY, *BERT, "--out_dir=bert", cwd=workdir)
    pieces = ["the king ", "", "", "en my lord ", ""]  # letters every test corpus has; four markers
    prompt = "[MASK]".join(pieces)
    p = run("sample.py", "--ckpt=bert", f"--start={prompt}", "--num_samples=2", "--temperature=0", "--device=cpu",
            cwd=workdir)
    half = len(p.stdout) // 2
    assert p.stdout[:half] == p.stdout[half:]  # greedy: the same fill twice (a filled character may be a newline)
    out = p.stdout[:half - 1]
    assert len(out) == len(prompt) - 4 * len("[MASK]") + 4 and "[MASK]" not in out and "4 tokens" in p.stderr
    assert out[:9] == "the king " and out[12:23] == "en my lord "
    # sampled fills; a prompt longer than block_size works too
    long = "the lord " * 6 + "[MASK]" + " the king" * 4
    p = run("sample.py", "--ckpt=bert", f"--start={long}", "--num_samples=1", "--device=cpu", cwd=workdir)
    assert len(p.stdout) - 1 == len(long) - 5 and p.stdout.startswith("the lord " * 6)


def test_sample_mask_marker_with_a_causal_model_is_one_line(workdir):
    run("train.py", *TINY, "--max_iters=2", "--eval_interval=2", "--out_dir=gpt", cwd=workdir)
    p = run("sample.py", "--ckpt=gpt", "--start=to be or [MASK]", "--device=cpu", cwd=workdir, check=False)
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and p.stderr.startswith("error:")
    assert "fill" in p.stderr and "[MASK]" in p.stderr
