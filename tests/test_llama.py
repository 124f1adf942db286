"""models/llama.py: parity with transformers' Llama and Mistral, KV-cache correctness (MHA, GQA, MQA, sliding
window), gradient checkpointing, init loss. CPU, tiny configs. Parity and cache checks run in float64 (float32
summation order differs between CPUs, so a fixed float32 bound is luck), with bounds relative to the logit scale;
one float32 smoke check against transformers remains."""

import math

import pytest
import torch
import transformers

from conftest import bf16_autocast_run, cached_step_logits, full_forward_greedy, rel_diff, scale_up, tokens
from models.llama import Config, Model, ffn_hidden_dim

V = 97  # vocabulary of the tiny test models
STD = 0.2  # scale_up's weight std: logits far from flat, greedy decoding means something


def tiny(**kw):
    cfg = dict(block_size=64, vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, ffn_hidden=96,
               tie_embeddings=False)
    cfg.update(kw)
    return Config(**cfg)


# transformers' "eager" attention runs its softmax in float32 even for a float64 model (max diff ~2e-6 on logits
# of size ~6); "sdpa" stays in float64 and agrees with ours to rounding.
HF_ATTN = "sdpa"


def hf_model(cls_name, cfg_name, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    kw = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation=HF_ATTN, **kw)
    return scale_up(getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**kw)), STD).to(dtype)


def hf_greedy(hf, idx, n):
    out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    assert out.shape == (idx.size(0), idx.size(1) + n)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Parity with transformers


LLAMA_HF = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0})


def test_llama_gqa_parity_and_greedy_generation():
    hf = hf_model("LlamaForCausalLM", "LlamaConfig", **LLAMA_HF)
    cfg = tiny(norm_eps=1e-6, rope_theta=500000.0)
    model = Model.from_hf_state_dict(hf.state_dict(), cfg).double().eval()
    idx = tokens(2, 40, V)
    with torch.no_grad():
        diff = rel_diff(model(idx)[0], hf(idx).logits)
    print(f"llama GQA float64 logits max rel diff {diff:.3g}")
    assert diff < 1e-9

    prompt = idx[:, :6]
    ours = model.generate(prompt, 30, temperature=0)
    theirs = hf_greedy(hf, prompt, 30)
    assert torch.equal(ours, theirs)
    assert len(set(ours[0, 6:].tolist())) > 3  # not a single repeated token: the comparison means something
    with torch.no_grad():  # and the logits along the generated sequence agree too
        assert rel_diff(cached_step_logits(model, ours, 6), hf(ours).logits) < 1e-9


def test_llama_float32_smoke_matches_hf():
    """The one float32 check: loose enough (1e-4 of the logit scale) to hold on any CPU."""
    hf = hf_model("LlamaForCausalLM", "LlamaConfig", dtype=torch.float32, **LLAMA_HF)
    model = Model.from_hf_state_dict(hf.state_dict(), tiny(norm_eps=1e-6, rope_theta=500000.0)).eval()
    idx = tokens(2, 40, V)
    with torch.no_grad():
        logits, ref = model(idx)[0], hf(idx).logits
    assert logits.dtype == torch.float32 and rel_diff(logits, ref) < 1e-4


def test_mistral_sliding_window_parity_and_generation():
    W = 5
    hf = hf_model("MistralForCausalLM", "MistralConfig", vocab_size=V, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                  rms_norm_eps=1e-5, sliding_window=W, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg = tiny(n_kv_head=1, sliding_window=W)
    model = Model.from_hf_state_dict(hf.state_dict(), cfg).double().eval()
    idx = tokens(2, 24, V)  # sequence much longer than the window
    with torch.no_grad():
        ours, theirs = model(idx)[0], hf(idx).logits
        no_window = Model.from_hf_state_dict(hf.state_dict(), tiny(n_kv_head=1)).double()(idx)[0]
    diff = rel_diff(ours, theirs)
    print(f"mistral window float64 logits max rel diff {diff:.3g}")
    assert diff < 1e-9
    assert (no_window - theirs).abs().max().item() > 1e-2  # the window really changes the result

    prompt = idx[:, :3]
    gen = model.generate(prompt, 30, temperature=0)  # 33 tokens, window 5: the rolling cache wraps many times
    assert torch.equal(gen, hf_greedy(hf, prompt, 30))
    assert torch.equal(gen, full_forward_greedy(model, prompt, 30))
    with torch.no_grad():
        assert rel_diff(cached_step_logits(model, gen, 3), hf(gen).logits) < 1e-9


@pytest.mark.parametrize("window,tie", [(None, False), (6, True)])
def test_to_hf_builds_the_same_network(window, tie):
    torch.manual_seed(0)
    model = scale_up(Model(tiny(sliding_window=window, tie_embeddings=tie)), STD).double()
    cfg_cls, kwargs, model_cls, sd = model.to_hf()
    assert (cfg_cls, model_cls) == (("MistralConfig", "MistralForCausalLM") if window else
                                    ("LlamaConfig", "LlamaForCausalLM"))
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kwargs, attn_implementation=HF_ATTN))
    hf.double().load_state_dict(sd)
    hf.eval()
    idx = tokens(2, 32, V)
    with torch.no_grad():
        assert rel_diff(model(idx)[0], hf(idx).logits) < 1e-9
    # and back again
    back = Model.from_hf_state_dict(hf.state_dict(), model.config).double().eval()
    with torch.no_grad():
        assert torch.equal(back(idx)[0], model(idx)[0])


# ----------------------------------------------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("n_kv_head", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
def test_cached_generate_equals_full_forward(n_kv_head):
    torch.manual_seed(0)
    model = scale_up(Model(tiny(n_kv_head=n_kv_head)), STD).double()
    assert model.layers[0].attention.wk.weight.shape == (n_kv_head * 16, 64)
    prompt = tokens(2, 5, V)
    gen = model.generate(prompt, 30, temperature=0)
    assert torch.equal(gen, full_forward_greedy(model, prompt, 30))
    with torch.no_grad():
        diff = rel_diff(cached_step_logits(model, gen, 5), model(gen)[0])
    print(f"llama cached vs full float64 logits max rel diff {diff:.3g}")
    assert diff < 1e-9
    model.setup_cache(2, "cpu", torch.float64)  # the cache holds only the kv heads
    assert model.layers[0].attention.cache_k.shape == (2, n_kv_head, 64, 16)
    model.free_cache()
    assert model.layers[0].attention.cache_k is None


@pytest.mark.parametrize("prompt_len", [10, 20], ids=["short", "longer_than_block"])
def test_generate_past_block_size_refills_from_recent_half(prompt_len):
    torch.manual_seed(0)
    model = scale_up(Model(tiny(block_size=16)), STD).double()
    prompt = tokens(1, prompt_len, V)
    gen = model.generate(prompt, 30, temperature=0)
    # Reference: full forward over the documented context: a long prompt's last block_size tokens (not half of
    # them), growing to block_size, then restarting from the last block_size // 2 tokens.
    idx, start = prompt, max(0, prompt_len - 16)
    for _ in range(30):
        logits, _ = model(idx[:, start:])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
        if idx.size(1) - start > 16:
            start = idx.size(1) - 8
    assert torch.equal(gen, idx)


@pytest.mark.parametrize("window", [6, 24], ids=["window_below_block", "window_above_block"])
def test_rolling_cache_past_block_size_equals_full_forward(window):
    """A window model generates past its block_size (positions keep counting, RoPE computed on the fly) with a
    cache of sliding_window slots, and still equals a full forward over the whole sequence. A window wider than
    block_size keeps all its slots: past block_size each token still sees the last `window` tokens."""
    torch.manual_seed(0)
    small = scale_up(Model(tiny(block_size=16, sliding_window=window)), STD).double()
    big = Model(tiny(block_size=64, sliding_window=window)).double().eval()  # same weights, longer RoPE tables
    big.load_state_dict(small.state_dict())
    prompt = tokens(2, 20, V)  # longer than block_size: prefill 16, then the rest one token at a time
    gen = small.generate(prompt, 30, temperature=0)
    assert torch.equal(gen, full_forward_greedy(big, prompt, 30))
    with torch.no_grad():
        small.setup_cache(2, "cpu", torch.float64)
        assert small.layers[0].attention.cache_k.shape == (2, 2, window, 16)  # flat memory, however long it runs
        steps = cached_step_logits(small, gen, 16)
        assert rel_diff(steps, big(gen)[0]) < 1e-9
    with pytest.raises(ValueError):
        small(gen)  # a full forward is still bounded by block_size


@pytest.mark.parametrize("window", [None, 16, 6])
def test_one_cache_takes_chunks_until_it_wraps(window):
    """Full attention is the rolling cache that never wraps: prompt chunks at any start_pos give the logits of a full
    forward while start_pos + T fits the cache (block_size, or the window); a chunk past a rolling cache's end is
    refused (its older keys are overwritten), a whole prompt at start_pos=0 is not."""
    torch.manual_seed(0)
    model = scale_up(Model(tiny(block_size=16, sliding_window=window)), STD).double()
    idx = tokens(2, 16, V)
    with torch.no_grad():
        full = model(idx)[0]
        model.setup_cache(2, "cpu", torch.float64)
        if window == 6:
            assert rel_diff(model(idx, start_pos=0)[0], full) < 1e-12  # wraps inside one prompt: fine
            with pytest.raises(ValueError, match="start_pos=0"):
                model(idx[:, 4:8], start_pos=4)
            return
        chunks = [model(idx[:, a:b], start_pos=a)[0] for a, b in ((0, 5), (5, 6), (6, 12), (12, 16))]
    model.free_cache()
    assert rel_diff(torch.cat(chunks, dim=1), full) < 1e-12


def test_sampling_shapes_and_determinism():
    torch.manual_seed(0)
    model = Model(tiny()).eval()
    prompt = tokens(3, 4, V)
    torch.manual_seed(5)
    a = model.generate(prompt, 12, temperature=0.8, top_k=10, top_p=0.9)
    torch.manual_seed(5)
    b = model.generate(prompt, 12, temperature=0.8, top_k=10, top_p=0.9)
    assert a.shape == (3, 16) and torch.equal(a, b) and torch.equal(a[:, :4], prompt)


def test_autocast_bf16_forward_and_generate():
    torch.manual_seed(0)
    model = Model(tiny(sliding_window=8))
    idx = tokens(2, 32, V)
    logits, loss, gen = bf16_autocast_run(model, idx)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert gen.shape == (2, 16)


# ----------------------------------------------------------------------------------------------------------------
# Training path


def test_grad_checkpoint_gives_equal_gradients():
    torch.manual_seed(0)
    a = Model(tiny(sliding_window=8))
    b = Model(tiny(sliding_window=8, grad_checkpoint=True))
    b.load_state_dict(a.state_dict())
    idx, targets = tokens(2, 32, V), tokens(2, 32, V, seed=2)
    la, lb = a(idx, targets)[1], b(idx, targets)[1]
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), abs=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert (pa.grad - pb.grad).abs().max().item() < 1e-6, name


def test_loss_at_init_is_ln_vocab():
    torch.manual_seed(0)
    model = Model(tiny(tie_embeddings=True))
    idx, targets = tokens(4, 64, V), tokens(4, 64, V, seed=2)  # targets unrelated to the input (tied embeddings at
    _, loss = model(idx, targets)                          # init favour repeating the input token)
    assert abs(loss.item() - math.log(V)) < 0.05
    masked = targets.clone()
    masked[:, ::2] = -1  # ignore_index=-1: only the other half counts
    logits, loss_masked = model(idx, masked)
    keep = masked != -1
    ref = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert loss_masked.item() == pytest.approx(ref.item(), rel=1e-6)


def test_tied_embeddings_and_param_counts():
    tied, untied = Model(tiny(tie_embeddings=True)), Model(tiny(tie_embeddings=False))
    assert tied.tok_embeddings.weight is tied.output.weight
    emb = V * 64
    assert untied.num_params(non_embedding=False) - tied.num_params(non_embedding=False) == emb
    assert untied.num_params() == untied.num_params(non_embedding=False) - emb  # the lookup does no matmul
    assert tied.num_params() == tied.num_params(non_embedding=False)  # the tied table is the output matmul
    assert tied.flops_per_token() == 6 * tied.num_params() + 12 * 2 * 64 * 64


def test_sliding_window_flops_equal_full_attention():
    """Training runs dense SDPA with a boolean window mask: every one of the T^2 scores is computed, so a window
    model's FLOPs (and MFU) are those of full attention over block_size keys."""
    full, window = Model(tiny()), Model(tiny(sliding_window=8))
    assert window.flops_per_token() == full.flops_per_token() == 6 * full.num_params() + 12 * 2 * 64 * 64


def test_ffn_hidden_rule_matches_llama_reference():
    """ffn_hidden=None is the Llama reference's rule with multiple_of=256; an int sets the size directly."""
    assert ffn_hidden_dim(Config(n_embd=4096)) == 11008  # Llama 7B
    assert ffn_hidden_dim(Config(n_embd=768)) == 2048 and ffn_hidden_dim(Config(n_embd=128)) == 512
    assert ffn_hidden_dim(Config(n_embd=768, ffn_hidden=2304)) == 2304
    assert Model(tiny(ffn_hidden=88)).layers[0].feed_forward.w1.weight.shape == (88, 64)


def test_kv_cache_bytes_mha_gqa_mqa():
    sizes = [Model(tiny(n_kv_head=h)).kv_cache_bytes_per_token(dtype_bytes=2) for h in (4, 2, 1)]
    assert sizes == [2 * 2 * 4 * 16 * 2, 2 * 2 * 2 * 16 * 2, 2 * 2 * 1 * 16 * 2]


def test_bad_configs_and_long_sequences_raise():
    with pytest.raises(ValueError, match="n_kv_head"):
        Model(tiny(n_kv_head=3))
    with pytest.raises(ValueError, match="n_head"):
        Model(tiny(n_head=5))
    with pytest.raises(ValueError, match="even"):
        Model(tiny(n_embd=72, n_head=8))  # head size 9
    with pytest.raises(ValueError, match="block_size"):
        Model(tiny(block_size=16))(tokens(1, 17, V))
