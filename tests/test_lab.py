"""models/lab.py: its two endpoints equal models/gpt2.py and models/llama.py (same weights, float64 logits), the
pieces with a reference match it (ALiBi slopes, T5 buckets, QK-norm, ReLU^2, sinusoids), every option decodes from
the KV cache exactly as a full forward does, every position scheme but learned evaluates past block_size, and bad
configs are one ValueError. Parity and cache checks run in float64 with bounds relative to the logit scale."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import bf16_autocast_run, cached_step_logits, full_forward_greedy, rel_diff, scale_up, tokens
from models import gpt2, llama
from models.lab import MLP, Attention, Config, Model, alibi_slopes, ffn_hidden_dim, t5_bucket

V = 97  # vocabulary of the tiny test models
STD = 0.2  # scale_up's weight std: logits far from flat, so greedy decoding means something
POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "t5", "none"]
OPTIONS = {"qk_norm": dict(qk_norm=True), "parallel": dict(parallel=True), "share_layers": dict(share_layers=True),
           "relu2": dict(activation="relu2"), "swiglu": dict(activation="swiglu"), "mqa": dict(n_kv_head=1),
           "gqa": dict(n_kv_head=2), "mod": dict(mod_capacity=0.25)}


def build(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(block_size=32, vocab_size=V, n_layer=4, n_head=4, n_embd=32, tie_embeddings=False)
    cfg.update(kw)
    # The T5 table gets std 1: a bias of 0.2 would hardly move the scores, and the test would not see it.
    model = scale_up(Model(Config(**cfg)), lambda name: 1.0 if "table" in name else STD)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # scale_up draws every norm tensor in 0.5..1.5: right for gains, not for LayerNorm biases
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * STD)
    return model.double()


# ----------------------------------------------------------------------------------------------------------------
# The endpoints: GPT-2 and LLaMA are points of the lab's space. The state-dict mappings live here, not in the model.


def gpt2_to_lab(sd):
    """models/gpt2.py keys -> models/lab.py keys: pure renaming (c_attn packs q | k | v rows, as wqkv does)."""
    top = {"transformer.wte.weight": "wte.weight", "transformer.wpe.weight": "position.wpe.weight",
           "transformer.ln_f.weight": "norm_f.weight", "transformer.ln_f.bias": "norm_f.bias",
           "lm_head.weight": "lm_head.weight"}
    layer = {"ln_1": "attn_norm", "ln_2": "mlp_norm", "attn.c_attn": "attn.wqkv", "attn.c_proj": "attn.wo",
             "mlp.c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}
    out = {}
    for k, v in sd.items():
        if k in top:
            out[top[k]] = v
            continue
        _, _, i, rest = k.split(".", 3)  # transformer.h.{i}.{module}.{weight|bias}
        module, kind = rest.rsplit(".", 1)
        out[f"blocks.{i}.{layer[module]}.{kind}"] = v
    return out


def llama_to_lab(sd):
    """models/llama.py keys -> models/lab.py keys: renaming, and wq, wk, wv stacked into wqkv (rows q | k | v)."""
    top = {"tok_embeddings.weight": "wte.weight", "norm.weight": "norm_f.weight", "output.weight": "lm_head.weight"}
    layer = {"attention_norm": "attn_norm", "ffn_norm": "mlp_norm", "attention": "attn", "feed_forward": "mlp"}
    out = {}
    for k, v in sd.items():
        if k in top:
            out[top[k]] = v
        elif not k.endswith(("wk.weight", "wv.weight")):  # layers.{i}.{module}.{rest}
            _, i, module, rest = k.split(".", 3)
            if rest == "wq.weight":
                v, rest = torch.cat([v, sd[k.replace("wq", "wk")], sd[k.replace("wq", "wv")]]), "wqkv.weight"
            out[f"blocks.{i}.{layer[module]}.{rest}"] = v
    return out


def test_gpt2_endpoint_equals_models_gpt2():
    torch.manual_seed(0)
    ref = scale_up(gpt2.Model(gpt2.Config(block_size=32, vocab_size=V, n_layer=2, n_head=4, n_embd=32)), STD)
    with torch.no_grad():  # scale_up draws every tensor around 0; LayerNorm gains around 1, biases non-zero
        for name, p in ref.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.add_(1.0)
    ref = ref.double()
    lab = Model(Config(block_size=32, vocab_size=V, n_layer=2, n_head=4, n_embd=32)).double().eval()  # defaults
    lab.load_state_dict(gpt2_to_lab(ref.state_dict()))
    idx = tokens(3, 32, V)
    with torch.no_grad():
        diff = rel_diff(lab(idx)[0], ref(idx)[0])
    print(f"lab (GPT-2 choices) vs models/gpt2.py float64 logits max rel diff {diff:.3g}")
    assert diff < 1e-9
    prompt = idx[:, :5]
    out = lab.generate(prompt, 27, temperature=0)
    assert torch.equal(out, ref.generate(prompt, 27, temperature=0)) and len(set(out[0, 5:].tolist())) > 2
    assert lab.flops_per_token() == ref.flops_per_token()


LLAMA = dict(block_size=64, vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, ffn_hidden=96,
             norm_eps=1e-6, rope_theta=500000.0, tie_embeddings=False)


def test_llama_endpoint_equals_models_llama():
    torch.manual_seed(0)
    ref = scale_up(llama.Model(llama.Config(**LLAMA)), STD).double()
    lab = Model(Config(**LLAMA, norm="rmsnorm", bias=False, activation="swiglu", position="rope")).double().eval()
    lab.load_state_dict(llama_to_lab(ref.state_dict()))
    idx = tokens(3, 64, V)
    with torch.no_grad():
        diff = rel_diff(lab(idx)[0], ref(idx)[0])
    print(f"lab (LLaMA choices) vs models/llama.py float64 logits max rel diff {diff:.3g}")
    assert diff < 1e-9
    prompt = idx[:, :6]
    out = lab.generate(prompt, 40, temperature=0)
    assert torch.equal(out, ref.generate(prompt, 40, temperature=0)) and len(set(out[0, 6:].tolist())) > 2
    assert lab.flops_per_token() == ref.flops_per_token()


# ----------------------------------------------------------------------------------------------------------------
# Pieces against their references


def paper_slopes(n):
    """ALiBi's slopes as the paper describes them: for a power of two n, a geometric sequence whose first term and
    ratio are both 2^(-8/n); otherwise the closest lower power of two's sequence, then every other term of the
    sequence for twice that power, as many as are missing."""
    if n & (n - 1) == 0:
        ratio = 2.0 ** (-8.0 / n)
        return [ratio ** (i + 1) for i in range(n)]
    m = 1 << (n.bit_length() - 1)
    return paper_slopes(m) + paper_slopes(2 * m)[0::2][:n - m]


def test_alibi_slopes_match_the_paper():
    assert alibi_slopes(8) == [2.0 ** -k for k in range(1, 9)]  # the paper's example: 1/2, 1/4, ..., 1/256
    assert alibi_slopes(6) == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    assert alibi_slopes(12) == pytest.approx([2.0 ** -k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)],
                                             rel=1e-14)
    for n in range(1, 70):
        assert alibi_slopes(n) == pytest.approx(paper_slopes(n), rel=1e-14), n
    # In the model: score bias -slope_h * (i - j) below the diagonal, -inf above it, the same in every layer.
    model = build(position="alibi", n_head=8, n_embd=64)
    pos = torch.arange(10)
    bias = model.position.bias(pos, pos)  # (H, T, S)
    i, j = pos[:, None], pos[None, :]
    expect = -torch.tensor(alibi_slopes(8), dtype=torch.float64)[:, None, None] * (i - j)
    assert torch.equal(bias, expect.masked_fill(j > i, float("-inf")))


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20), (64, 256)])
def test_t5_buckets_match_transformers(num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    distance = torch.arange(-30, 2000)  # query - key; negative = a future key (masked, bucket 0)
    ref = T5Attention._relative_position_bucket(-distance, bidirectional=False, num_buckets=num_buckets,
                                                max_distance=max_distance)  # T5 takes key - query
    ours = t5_bucket(distance, num_buckets, max_distance)
    assert torch.equal(ours, ref)
    assert ours.max() == num_buckets - 1 and ours[distance >= max_distance].eq(num_buckets - 1).all()


def test_t5_bias_is_one_table_for_all_layers():
    model = build(position="t5")
    assert [n for n, _ in model.named_parameters() if "table" in n] == ["position.table.weight"]
    pos = torch.arange(40)
    bias = model.position.bias(pos, pos)  # (H, T, S)
    i, j = 39, torch.arange(40)
    expect = model.position.table.weight[t5_bucket(i - j, 32, 128)].T  # (H, S)
    assert torch.equal(bias[:, i], expect)
    assert torch.isinf(bias[:, 3, 4:]).all()


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_qk_norm_by_definition(norm):
    """q and k normalised over each head's dimensions (with the norm's gain, and bias for LayerNorm) before q.k."""
    torch.manual_seed(0)
    cfg = Config(block_size=16, vocab_size=V, n_head=4, n_embd=32, norm=norm, qk_norm=True)
    attn = scale_up(Attention(cfg), 0.3).double()  # the q/k norm gains drawn in 0.5..1.5
    x = torch.randn(2, 10, 32, dtype=torch.float64)

    def heads(t):
        return t.view(2, 10, 4, 8).transpose(1, 2)  # (B, h, T, hs)

    def normed(t, m):
        if norm == "rmsnorm":  # computed in float32, as the model's RMSNorm (and llama.py, and transformers)
            t32 = t.float()
            return (t32 * torch.rsqrt(t32.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)).double() * m.weight
        return (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + cfg.norm_eps) \
            * m.weight + m.bias

    q, k, v = (heads(t) for t in F.linear(x, attn.wqkv.weight, attn.wqkv.bias).split(32, dim=-1))
    q, k = normed(q, attn.q_norm), normed(k, attn.k_norm)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(torch.ones(10, 10).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, 32)
    with torch.no_grad():
        assert rel_diff(attn(x, None, None), F.linear(y, attn.wo.weight, attn.wo.bias)) < 1e-12
    assert not isinstance(Attention(Config(n_head=4, n_embd=32)).q_norm, type(attn.q_norm))  # off by default


def test_relu2_by_definition_and_ffn_sizes():
    torch.manual_seed(0)
    mlp = scale_up(MLP(Config(n_embd=32, activation="relu2")), 0.3).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    h = F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias)
    with torch.no_grad():
        assert rel_diff(mlp(x), F.linear(torch.where(h > 0, h * h, 0.0), mlp.c_proj.weight, mlp.c_proj.bias)) < 1e-14
    assert mlp.c_fc.out_features == 128  # 4 * n_embd
    # SwiGLU's default: int(2/3 * 4 * n_embd) rounded up to a multiple of 8 (three matrices, the parameters of two)
    for n_embd, hidden in ((32, 88), (64, 176), (768, 2048), (4096, 10928)):
        assert ffn_hidden_dim(Config(n_embd=n_embd, activation="swiglu")) == hidden
        assert abs(3 * hidden - 8 * n_embd) <= 24
    assert ffn_hidden_dim(Config(n_embd=32, activation="swiglu", ffn_hidden=50)) == 50


def test_sinusoids_are_the_2017_encoding():
    from models.transformer import sinusoidal_encoding

    model = Model(Config(block_size=8, vocab_size=V, n_layer=1, n_head=2, n_embd=32, position="sinusoidal"))
    x = torch.zeros(1, 100, 32)
    pe = model.position.embed(x, torch.arange(100))[0]  # computed past block_size: no table, no end
    assert (pe - sinusoidal_encoding(100, 32)).abs().max() < 1e-5
    scaled = model.position.embed(x + 1, torch.arange(100))[0] - pe  # the token embedding times sqrt(n_embd)
    assert (scaled - math.sqrt(32)).abs().max() < 1e-5


# ----------------------------------------------------------------------------------------------------------------
# Every option: cached generation equals a full forward; lengths past block_size


def check_cached_equals_full(model, what):
    T = model.config.block_size
    prompt = tokens(2, 5, V)
    gen = model.generate(prompt, T - 5, temperature=0)  # up to a full cache (past it: the refill, as gpt2.py)
    assert torch.equal(gen, full_forward_greedy(model, prompt, T - 5)), what
    # and every cache step's logits (a 5-token prefill, then one token a step) against one full forward, on random
    # tokens: greedy text from a random model often settles on one repeated token, which would test little
    idx = tokens(2, T, V, seed=2)
    with torch.no_grad():
        diff = rel_diff(cached_step_logits(model, idx, 5), model(idx)[0])
    print(f"lab {what}: cached vs full float64 logits max rel diff {diff:.3g}")
    assert diff < 1e-9, what


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_generation_equals_full_forward_per_position(position):
    check_cached_equals_full(build(position=position), position)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
def test_cached_generation_equals_full_forward_per_option(option, position):
    model = build(position=position, **OPTIONS[option])
    check_cached_equals_full(model, f"{option} with {position}")
    if option == "mod":  # the causal rule both skipped and processed tokens (the last forward: full, random tokens)
        assert 0.1 < model.stats["mod_processed"] < 0.9, model.stats
    if option == "share_layers":
        assert len(model.blocks) == 1 and model.flops_per_token() == build(position=position).flops_per_token()
    if option in ("mqa", "gqa"):
        model.setup_cache(2, "cpu", torch.float64)
        assert model.cache_k.shape == (4, 2, OPTIONS[option]["n_kv_head"], 32, 8)  # the cache keeps kv heads only
        model.free_cache()


@pytest.mark.parametrize("position", ["t5", "sinusoidal", "none"])
def test_mod_with_bias_and_additive_positions(position):
    check_cached_equals_full(build(position=position, mod_capacity=0.25, share_layers=True), f"mod with {position}")


@pytest.mark.parametrize("position", POSITIONS)
def test_forward_at_twice_block_size(position):
    model = build(position=position)
    idx = tokens(2, 64, V)
    if position == "learned":
        with pytest.raises(ValueError, match="learned positions end at block_size"):
            model(idx)
        return
    with torch.no_grad():
        long, short = model(idx)[0], model(idx[:, :32])[0]
    assert long.shape == (2, 64, V) and torch.isfinite(long).all()
    assert rel_diff(long[:, :32], short) < 1e-9  # causal: the first block_size positions see nothing later
    # generation still runs on a block_size cache: a long prompt is prefilled with its last block_size tokens
    first = model.generate(idx[:, :40], 1, temperature=0)[:, -1]
    with torch.no_grad():
        assert torch.equal(first, model(idx[:, 8:40])[0][:, -1].argmax(-1))


# ----------------------------------------------------------------------------------------------------------------
# Mixture-of-Depths: training picks top-k, evaluation and decoding the causal rule the router loss trains


@pytest.mark.parametrize("position", ["learned", "rope", "alibi", "t5"])
def test_mod_top_k_path_equals_the_dense_rule_on_the_same_tokens(position):
    """Shift the router's bias so that exactly the top-k tokens have a positive logit: then the training path
    (gathered top-k sub-sequence at its own positions) and the evaluation path (dense, masked) must agree."""
    model = build(position=position, n_layer=2, mod_capacity=0.25)  # one routed layer: block 1
    idx = tokens(1, 32, V)
    seen = {}
    hook = model.routers["1"].register_forward_hook(lambda m, args, out: seen.update(z=out.squeeze(-1)))
    with torch.no_grad():
        model(idx)
        z = seen["z"][0].sort(descending=True).values
        model.routers["1"].bias -= (z[7] + z[8]) / 2  # k = 0.25 * 32 = 8
        dense = model(idx)[0]
        assert model.stats["mod_processed"] == 0.25
        model.train()
        top_k = model(idx)[0]
    hook.remove()
    assert rel_diff(top_k, dense) < 1e-9
    # training: loss = cross-entropy + the router's BCE, and the router learns through both
    _, loss = model(idx, targets=idx)
    ce = F.cross_entropy(top_k.view(-1, V), idx.view(-1))
    assert abs(loss.item() - ce.item() - model.stats["mod_bce"].item()) < 1e-12
    loss.backward()
    assert model.routers["1"].weight.grad.abs().sum() > 0
    model.eval()
    assert model(idx, targets=idx)[1].item() == pytest.approx(ce.item(), rel=1e-9)  # eval: cross-entropy alone


def test_mod_flops_count_the_capacity():
    dense, mod = build(), build(mod_capacity=0.25)
    per_block = sum(p.numel() for p in dense.blocks[0].parameters())
    attention = 12 * 32 * 32  # 12 * n_embd * block_size per layer
    # two of four layers at capacity 0.25: 1.5 blocks of matmuls saved, attention at 0.25^2 there; + the routers
    expect = dense.flops_per_token() - 6 * 1.5 * per_block + 6 * 2 * 33 - 2 * (1 - 0.25 ** 2) * attention
    assert mod.flops_per_token() == pytest.approx(expect, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# bf16 autocast, bad configs


@pytest.mark.parametrize("position", ["alibi", "t5"])
def test_bf16_autocast_float_bias_and_mod(position):
    model = build(position=position, mod_capacity=0.5).float()
    logits, loss, gen = bf16_autocast_run(model, tokens(2, 32, V))  # eval: the causal rule, decoding from the cache
    assert torch.isfinite(logits).all() and torch.isfinite(loss) and gen.shape == (2, 16)
    model.train()  # training: the top-k path, its bf16 updates added to the float32 residual stream
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(tokens(2, 32, V), targets=tokens(2, 32, V, seed=3))
    loss.backward()
    assert torch.isfinite(loss) and model.routers["1"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kw,words", [
    (dict(norm="batchnorm"), "set norm to one of layernorm, rmsnorm"),
    (dict(activation="tanh"), "set activation to one of gelu, relu2, swiglu"),
    (dict(position="xpos"), "set position to one of learned, sinusoidal, rope, alibi, t5, none"),
    (dict(n_kv_head=3), "set n_kv_head to a divisor of n_head"),
    (dict(mod_capacity=0.0), r"mod_capacity \(0.0\) must be in \(0, 1\]"),
    (dict(mod_capacity=1.5), r"mod_capacity \(1.5\) must be in \(0, 1\]"),
    (dict(position="rope", n_head=4, n_embd=36), "position='rope' needs an even head size"),
    (dict(n_head=5), "n_embd .32. must be divisible by n_head .5."),
])
def test_bad_configs_are_value_errors_that_say_what_to_set(kw, words):
    with pytest.raises(ValueError, match=words):
        Model(Config(**{**dict(block_size=16, vocab_size=V, n_layer=2, n_head=4, n_embd=32), **kw}))
