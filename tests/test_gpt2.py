"""models/gpt2.py against Hugging Face transformers' GPT2LMHeadModel, and its own invariants."""

import math

import pytest
import torch
import transformers

from conftest import cached_step_logits, full_forward_greedy, sharpen
from models.gpt2 import Config, Model, sample_next

CFG = dict(block_size=32, vocab_size=97, n_layer=2, n_head=4, n_embd=32)


def hf_twin(model):
    cfg_cls, kwargs, model_cls, sd = model.to_hf()
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kwargs)).eval()
    hf.load_state_dict(sd)
    return hf.to(model.lm_head.weight.dtype)


def hf_and_ours(dtype):
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=None,
                                     eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval().to(dtype)
    ours = Model.from_hf_state_dict(hf.state_dict(), Config(**CFG)).eval().to(dtype)
    return hf, ours


# Parity runs in float64: float32 summation order differs between CPUs (and between our kernels and HF's), so a
# fixed float32 bound is luck. In float64 the same network must agree to ~1e-9 of the logit scale.
def test_logits_match_hf_loaded_from_hf_weights_float64():
    hf, ours = hf_and_ours(torch.float64)
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        logits, ref = ours(idx)[0], hf(idx).logits
    diff = (logits - ref).abs().max().item()
    print(f"gpt2 vs HF float64 logits max abs diff {diff:.3g}")
    assert logits.dtype == ref.dtype == torch.float64
    assert diff < 1e-9 * ref.abs().max().item(), diff


def test_logits_match_hf_float32_smoke():
    """The one float32 check: loose enough (1e-4 of the logit scale) to hold on any CPU."""
    hf, ours = hf_and_ours(torch.float32)
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        logits, ref = ours(idx)[0], hf(idx).logits
    assert (logits - ref).abs().max().item() < 1e-4 * ref.abs().max().item()


def test_to_hf_roundtrip_and_greedy_generate_equals_hf():
    torch.manual_seed(1)
    ours = sharpen(Model(Config(**CFG))).double().eval()
    hf = hf_twin(ours)
    idx = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        logits, ref = ours(idx)[0], hf(idx).logits
    assert (logits - ref).abs().max().item() < 1e-9 * ref.abs().max().item()
    out = ours.generate(idx, 20, temperature=0)
    ref = hf.generate(idx, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(out, ref)
    assert len(set(out[0, 6:].tolist())) > 2  # the comparison is not between two runs of one repeated token


def test_cached_generate_equals_full_forward_greedy():
    torch.manual_seed(2)
    model = sharpen(Model(Config(**CFG))).double().eval()
    idx = torch.randint(0, 97, (3, 5))
    n = CFG["block_size"] - 5  # fills the cache exactly; past it generate refills from the recent half (see docstring)
    gen = model.generate(idx, n, temperature=0)
    assert torch.equal(gen, full_forward_greedy(model, idx, n))
    # and the logits of the cache path (prefill, then one token a step) equal a full forward's
    with torch.no_grad():
        steps = cached_step_logits(model, gen, 5)
        full = model(gen)[0]
    diff = (steps - full).abs().max().item()
    print(f"gpt2 cached vs full float64 logits max abs diff {diff:.3g}")
    assert diff < 1e-9 * full.abs().max().item(), diff


def test_long_prompt_uses_last_block_then_refills_from_recent_half():
    """A prompt longer than block_size: the first token comes from its last block_size tokens (not from a half);
    when the cache is full, generation restarts from the most recent block_size // 2 tokens."""
    torch.manual_seed(2)
    model = sharpen(Model(Config(**CFG))).double().eval()
    B = CFG["block_size"]
    prompt = torch.randint(0, 97, (2, B + 7))
    gen = model.generate(prompt, 30, temperature=0)
    idx, start = prompt, prompt.size(1) - B
    with torch.no_grad():
        for _ in range(30):
            logits, _ = model(idx[:, start:])
            idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
            if idx.size(1) - start > B:
                start = idx.size(1) - B // 2
    assert torch.equal(gen, idx)
    assert all(b.attn.cache_k is None for b in model.transformer.h)  # generate freed its cache


def test_generate_runs_past_block_size_without_error():
    torch.manual_seed(3)
    model = Model(Config(**CFG)).eval()
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 100, temperature=1.0, top_k=10, top_p=0.9)
    assert out.shape == (1, 103) and out.max() < 97


def test_forward_rejects_sequence_longer_than_block_size():
    model = Model(Config(**CFG))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_sampling_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    assert sample_next(logits, temperature=0).item() == 1
    torch.manual_seed(0)
    assert {sample_next(logits, top_k=1).item() for _ in range(20)} == {1}
    # top_p: probabilities are 0.657, 0.242, 0.089, 0.012; p=0.5 keeps the top token, p=0.85 the top two
    assert {sample_next(logits, top_p=0.5).item() for _ in range(50)} == {1}
    assert {sample_next(logits, top_p=0.85).item() for _ in range(200)} == {1, 2}


def test_loss_at_init_is_about_ln_vocab():
    torch.manual_seed(0)
    model = Model(Config(**CFG))
    idx, targets = torch.randint(0, 97, (8, 32)), torch.randint(0, 97, (8, 32))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(97)) < 0.1


def test_ignore_index_and_overfit_tiny_batch():
    torch.manual_seed(0)
    model = Model(Config(**CFG))
    idx = torch.randint(0, 97, (4, 32))
    targets = idx.clone()
    targets[:, :16] = -1  # positions marked -1 do not count
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        _, loss = model(idx, targets)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_flops_per_token():
    model = Model(Config(**CFG))
    n = sum(p.numel() for p in model.parameters()) - 32 * 32  # without position embeddings
    assert model.flops_per_token() == 6 * n + 12 * 2 * 32 * 32
