"""The generation contract (README, "The model interface"), checked on every file in models/:

- setup_cache(batch_size, device, dtype) allocates the KV caches / recurrent states, free_cache() drops them, and
  generate() leaves none behind;
- caches hold the compute dtype (the autocast dtype under autocast, else the weights'); recurrent states are at
  least float32;
- cached generation equals a full forward at every step (float64, greedy);
- a prompt longer than the model's context: the first new token is what a full forward over the last block_size
  tokens predicts (models with no length limit use the whole prompt);
- greedy at temperature 0; bad sampling arguments are ValueErrors that name the argument.

A model that cannot decode incrementally says so with the class attribute `incremental = False` (models/bert.py:
a bidirectional encoder re-encodes its window every step) and has `mask_id`. For it "cached equals uncached"
becomes "each step equals a full forward over the last block_size - 1 tokens plus mask_id", and setup_cache may
allocate nothing.

A new model file must add its tiny config to TINY, so it cannot be skipped silently."""

import importlib
import os

import pytest
import torch

from conftest import ROOT, full_forward_greedy, sharpen, tokens

V = 61  # vocabulary of the tiny models
TINY = {
    "bert": dict(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
    "gpt2": dict(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32),
    "lab": dict(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32, mod_capacity=0.5),
    "linear_attention": dict(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32, chunk_size=8),
    "llama": dict(block_size=32, vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=64),
    "moe": dict(block_size=32, vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=32,
                n_expert=4, top_k=2),
    "mamba": dict(block_size=32, vocab_size=V, n_layer=2, d_model=32, d_state=8),
    "mamba2": dict(block_size=32, vocab_size=V, n_layer=2, d_model=32, d_state=8, head_dim=16, n_groups=2,
                   chunk_size=8),
    "retnet": dict(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=32, chunk_size=8),
    "t5": dict(block_size=32, vocab_size=V, src_len=8, d_model=32, n_head=2, d_kv=16, d_ff=64, n_encoder_layer=2,
               n_decoder_layer=2),
    "transformer": dict(block_size=32, vocab_size=V, src_len=8, d_model=32, n_head=2, d_ff=64, n_encoder_layer=2,
                        n_decoder_layer=2, dropout=0.0),
}
MODELS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "models")) if f.endswith(".py") and f != "__init__.py")


def test_every_model_file_has_a_tiny_config():
    assert sorted(TINY) == MODELS, "add the new model file's tiny config to TINY in this test"


def build(name, dtype=torch.float64, seed=0):
    module = importlib.import_module(f"models.{name}")
    torch.manual_seed(seed)
    model = module.Model(module.Config(**TINY[name]))
    # Sharper weights than the init, so greedy decoding is not a tie-break between nearly flat logits.
    sharpen(model, lambda pname, p: 4.0 if p.dim() == 2 and "A_log" not in pname else 1.0)
    return model.to(dtype).eval()


def cache_tensors(model):
    """Tensors a model holds outside its parameters and buffers: its caches and recurrent states."""
    return {f"{mname}.{k}": v for mname, m in model.named_modules() for k, v in vars(m).items()
            if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", MODELS)
def test_cache_api_and_dtypes(name):
    model = build(name, torch.float32)
    assert not cache_tensors(model)
    model.setup_cache(2, torch.device("cpu"), torch.bfloat16)
    held = cache_tensors(model)
    assert held or not incremental(model), f"models/{name}.py: setup_cache allocated nothing"
    assert all(v.dtype in (torch.bfloat16, torch.float32) for v in held.values())
    model.free_cache()
    assert not cache_tensors(model), f"models/{name}.py: free_cache left {sorted(cache_tensors(model))}"
    # Under autocast the caches take the autocast dtype; generate frees them when it returns.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(tokens(2, 5, V), 4, temperature=0)
    assert out.shape == (2, 9) and torch.equal(out[:, :5], tokens(2, 5, V))
    assert not cache_tensors(model), f"models/{name}.py: generate left {sorted(cache_tensors(model))}"


@pytest.mark.parametrize("name", MODELS)
def test_cached_generation_equals_full_forward(name):
    model = build(name)
    T = model.config.block_size
    idx = tokens(2, T // 2, V)
    ours = model.generate(idx, T // 2, temperature=0)  # up to a full context: no refill yet
    ref = full_forward_greedy(model, idx, T // 2) if incremental(model) else window_greedy(model, idx, T // 2)
    assert torch.equal(ours, ref)


def incremental(model):
    """False for a model documented as re-encoding its window each step (Model.incremental = False)."""
    return getattr(model, "incremental", True)


def with_mask(model, idx, T):
    """What a non-incremental model encodes to predict the next token: the last T - 1 tokens, then mask_id."""
    return torch.cat((idx[:, -(T - 1):], torch.full_like(idx[:, :1], model.mask_id)), dim=1)


def window_greedy(model, idx, n):
    """Greedy reference of a non-incremental model: a full forward over with_mask(...) each step."""
    for _ in range(n):
        logits, _ = model(with_mask(model, idx, model.config.block_size))
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


def bounded(model, T):
    """Whether the model refuses sequences longer than block_size (learned positions, a fixed cache)."""
    try:
        model(tokens(1, T + 1, V))
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("name", MODELS)
def test_long_prompt(name):
    model = build(name)
    T = model.config.block_size
    idx = tokens(2, T + 1, V)
    first = model.generate(idx, 1, temperature=0)[:, -1]
    context = idx[:, -T:] if bounded(model, T) else idx
    context = context if incremental(model) else with_mask(model, idx, T)
    assert torch.equal(first, model(context)[0][:, -1].argmax(-1))
    # Generating well past the context keeps working (the cache refills or the state rolls on).
    out = model.generate(idx, T + 3, temperature=0)
    assert out.shape == (2, 2 * T + 4) and torch.equal(out[:, : T + 1], idx)


@pytest.mark.parametrize("name", MODELS)
def test_sampling_arguments(name):
    model = build(name, torch.float32)
    idx = tokens(2, 6, V)
    torch.manual_seed(0)
    a = model.generate(idx, 5, temperature=0.8, top_k=5, top_p=0.9)
    torch.manual_seed(0)
    b = model.generate(idx, 5, temperature=0.8, top_k=5, top_p=0.9)
    assert torch.equal(a, b) and a.shape == (2, 11)
    assert torch.equal(model.generate(idx, 0), idx)  # nothing to generate
    top1 = model.generate(idx, 3, temperature=1.0, top_k=1)  # top_k=1 is greedy whatever the temperature
    assert torch.equal(top1, model.generate(idx, 3, temperature=0))
    bad = [(dict(max_new_tokens=-1), "max_new_tokens"), (dict(temperature=-0.5), "temperature"),
           (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")]
    for kwargs, word in bad:
        args = dict(max_new_tokens=3, **kwargs) if "max_new_tokens" not in kwargs else kwargs
        with pytest.raises(ValueError, match=word):
            model.generate(idx, **args)
    with pytest.raises(ValueError, match="empty"):
        model.generate(idx[:, :0], 3)
