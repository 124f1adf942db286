"""Tests for models/moe.py: parity with transformers' Mixtral (logits, load-balancing loss, total loss), the Switch
router and capacity dropping against SwitchTransformersSparseMLP and a hand-computed case, both expert paths (the
grouped matmul and the decode loop) against a per-token loop and each other, sparse upcycling from models/llama.py
(common/checkpoints.py adapt_weights, which train.py --init_from calls), and cached generation == a
full-forward greedy loop. Comparisons run in float64 with bounds relative to the output scale (float32 summation
order differs between CPUs), except one float32 smoke check against Mixtral."""

import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers

from conftest import cached_step_logits, full_forward_greedy, rel_diff
from models import gpt2, llama
from common.checkpoints import adapt_weights
from models.moe import MoE, Config, Model, grouped_matmul, grouped_matmul_loop

TINY = dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=48,
            n_expert=4, top_k=2, tie_embeddings=False)


def randomize_(model, std=0.15):
    """Random weights larger than the 0.02 init (norm gains around 1), so routing and logits are far from flat.
    Not conftest's scale_up: the global RNG and normal norm gains, the numbers these tests' bounds were set on."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else std * torch.randn_like(p))
    return model


# transformers' implementations that run in float64: its default grouped-mm experts have no float64 kernel, and its
# eager attention takes the softmax in float32 whatever the input dtype (SDPA keeps the input dtype).
HF_FLOAT64 = dict(attn_implementation="sdpa", experts_implementation="eager")

# What bounds Mixtral parity in float64: transformers' MixtralTopKRouter takes its softmax in float32 whatever the
# input dtype (softmax(router_logits.float())), so its routing weights carry float32 rounding (~6e-8 relative) into
# every expert output; our router runs in float64 for a float64 model. Seen: ~2e-7 of the logit scale (its RMSNorm
# also casts to float32, as ours and models/llama.py do, so that cast is the same on both sides).
HF_ROUTER_FLOAT32 = 1e-6


def hf_model(model):
    """transformers' model built as bench.py --vs_hf does, from our to_hf(), in the model's dtype."""
    cfg_cls, kwargs, model_cls, sd = model.to_hf()
    ref = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kwargs, **HF_FLOAT64))
    ref.load_state_dict(sd)
    return ref.to(model.output.weight.dtype)


def swiglu(x, w1, w2, w3):
    return F.silu(x @ w1.T) * (x @ w3.T) @ w2.T


# ----------------------------------------------------------------------------------------------------------------
# Parity with transformers' Mixtral


def test_mixtral_parity_logits_and_losses():
    torch.manual_seed(0)
    hf_cfg = transformers.MixtralConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, initializer_range=0.15,
        router_aux_loss_coef=0.02, router_jitter_noise=0.0, output_router_logits=True,
        bos_token_id=None, eos_token_id=None, **HF_FLOAT64)
    ref = transformers.MixtralForCausalLM(hf_cfg).eval()
    cfg = Config(**TINY, rope_theta=10000.0, aux_loss_coef=0.02, z_loss_coef=0.0)
    model = Model.from_hf_state_dict(ref.state_dict(), cfg).eval().double()
    ref.double()  # after copying: the same float32-initialised weights on both sides
    idx = torch.randint(0, 96, (3, 24))
    with torch.no_grad():
        out = ref(idx, labels=idx)
        logits, _ = model(idx)
    assert logits.dtype == torch.float64
    diff = rel_diff(logits, out.logits)
    assert diff < HF_ROUTER_FLOAT32, diff
    # Routing must be non-trivial for the comparison to mean something: several experts get tokens in each layer.
    assert all((r.topk(2, dim=-1).indices.unique().numel() == 4) for r in out.router_logits)

    # Training-mode loss: HF shifts labels inside; we pass shifted targets with -1 at the end (no target there).
    model.train()
    targets = torch.cat([idx[:, 1:], torch.full((3, 1), -1)], dim=1)
    with torch.no_grad():
        _, loss = model(idx, targets)
    # transformers' load_balancing_loss_func sums the router probabilities into float32 accumulators: float32-level.
    aux_diff = abs(model.stats["aux_loss"].item() / out.aux_loss.item() - 1)
    assert aux_diff < 1e-6, aux_diff
    assert abs(loss.item() / out.loss.item() - 1) < HF_ROUTER_FLOAT32, (loss.item(), out.loss.item())
    # And the pooled formula itself, straight from transformers' helper on our router's logits.
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    ours_logits = tuple(blk.feed_forward.route(blk.ffn_norm(h).view(-1, 32))[0]
                        for blk, h in zip(model.layers, hidden_before_ffn(model, idx)))
    ref_aux = load_balancing_loss_func(ours_logits, 4, 2)
    assert abs(ref_aux.item() / model.stats["aux_loss"].item() - 1) < 1e-6  # float32 accumulators, as above


def hidden_before_ffn(model, idx):
    """Residual stream of each block just before its feed-forward (the router's input after ffn_norm)."""
    out, x = [], model.tok_embeddings(idx)
    cos, sin = model.rope_cos[:idx.size(1)], model.rope_sin[:idx.size(1)]
    with torch.no_grad():
        for blk in model.layers:
            x = x + blk.attention(blk.attention_norm(x), cos, sin)
            out.append(x)
            x = x + blk.feed_forward(blk.ffn_norm(x))[0]
    return out


def test_to_hf_roundtrip_tied_embeddings():
    """float64 parity through to_hf(), and the one float32 smoke check (1e-4 of the logit scale, any CPU)."""
    torch.manual_seed(1)
    model = randomize_(Model(Config(**{**TINY, "tie_embeddings": True}))).eval()
    idx = torch.randint(0, 96, (2, 20))
    for dtype, bound in ((torch.float32, 1e-4), (torch.float64, HF_ROUTER_FLOAT32)):
        model.to(dtype)
        ref = hf_model(model).eval()
        with torch.no_grad():
            logits = model(idx)[0]
            diff = rel_diff(logits, ref(idx).logits)
        assert logits.dtype == dtype and diff < bound, (dtype, diff)


def test_to_hf_refuses_what_mixtral_cannot_express():
    with pytest.raises(ValueError, match="moe_every=1"):
        Model(Config(**{**TINY, "moe_every": 2})).to_hf()
    with pytest.raises(ValueError, match="router='mixtral'"):
        Model(Config(**{**TINY, "router": "switch", "top_k": 1})).to_hf()


# ----------------------------------------------------------------------------------------------------------------
# The MoE layer: dispatch, routers, capacity


def moe_layer(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = Config(**{**TINY, **overrides})
    layer = MoE(cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    return layer.double()


def per_token_reference(layer, x):
    """The layer's definition, one token at a time: route, then sum the chosen experts' SwiGLU outputs."""
    out = torch.zeros_like(x)
    for t in range(x.size(0)):
        probs = (x[t] @ layer.router.weight.T).softmax(-1)
        w, e = probs.topk(layer.top_k)
        if layer.renormalize:
            w = w / w.sum()
        for wi, ei in zip(w, e):
            out[t] += wi * swiglu(x[t], layer.w1[ei], layer.w2[ei], layer.w3[ei])
    return out


@pytest.mark.parametrize("path", ["experts_grouped", "experts_loop"])
@pytest.mark.parametrize("router,top_k", [("mixtral", 2), ("mixtral", 3), ("switch", 1)])
def test_dispatch_equals_per_token_loop(router, top_k, path, monkeypatch):
    layer = moe_layer(router=router, top_k=top_k, n_expert=5).eval()
    monkeypatch.setattr(MoE, "experts_forward", getattr(MoE, path))  # each path, whatever the batch size
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)[0]
    ref = per_token_reference(layer, x.view(-1, 32)).view(2, 13, 32)
    assert rel_diff(y, ref) < 1e-12


def test_grouped_matmul_kernel_and_loop_fallback_agree():
    torch.manual_seed(0)
    x, w = torch.randn(40, 16, dtype=torch.float64), torch.randn(3, 24, 16, dtype=torch.float64)
    offs = torch.tensor([8, 8, 40], dtype=torch.int32)  # an empty group in the middle
    ref = torch.cat([x[:8] @ w[0].T, x[8:] @ w[2].T])
    # The kernel has no float64: in float32 it is held to float32 rounding of 16-term dot products, far below 1e-5.
    assert rel_diff(grouped_matmul(x.float(), w.float(), offs), ref) < 1e-5
    # float64 (the exact tests) takes the per-expert loop, as float16/float32 on a GPU and MPS do: the same function.
    assert rel_diff(grouped_matmul(x, w, offs), ref) < 1e-14
    assert rel_diff(grouped_matmul_loop(x, w, offs), ref) < 1e-14


def test_switch_router_and_capacity_match_switch_transformers():
    """SwitchTransformersSparseMLP (top-1, weight = probability of the argmax expert, capacity counted per sequence
    in token order, overflow output 0) with our router weights and our SwiGLU experts swapped in."""
    T, E, cf = 16, 4, 1.0
    layer = moe_layer(router="switch", top_k=1, n_expert=E, capacity_factor=cf).train()
    capacity = math.ceil(cf * T * 1 / E)
    ref = transformers.models.switch_transformers.modeling_switch_transformers.SwitchTransformersSparseMLP(
        transformers.SwitchTransformersConfig(d_model=32, d_ff=48, num_experts=E, expert_capacity=capacity,
                                              router_bias=False, router_jitter_noise=0.0, router_dtype="float32",
                                              dropout_rate=0.0))

    class OurExpert(nn.Module):
        def __init__(self, e):
            super().__init__()
            self.e = e

        def forward(self, x):
            return swiglu(x, layer.w1[self.e], layer.w2[self.e], layer.w3[self.e])

    ref.double()
    ref.router.dtype = torch.float64  # its "selective precision" router dtype; the config refuses float64
    with torch.no_grad():
        ref.router.classifier.weight.copy_(layer.router.weight)
    for e in range(E):
        ref.experts[f"expert_{e}"] = OurExpert(e)
    x = torch.randn(3, T, 32, dtype=torch.float64)
    with torch.no_grad():
        y, stats = layer(x, True)
        y_ref = ref(x)
    assert rel_diff(y, y_ref) < 1e-12
    # Dropped = overflow beyond capacity of each expert in each sequence, counted by hand from the routing.
    choice = (x @ layer.router.weight.T).argmax(-1)  # (B, T)
    counts = F.one_hot(choice, E).sum(1)  # (B, E)
    expected = (counts - capacity).clamp(min=0).sum().item()
    assert expected > 0, "the random routing should overflow some expert"
    assert stats["dropped"].item() == expected


def test_capacity_hand_computed_top2_priority():
    """E=4, k=2, T=4, capacity_factor=1 -> capacity ceil(1 * 4 * 2 / 4) = 2 per expert per sequence.
    Tokens 0, 1 prefer expert 0 then 1; tokens 2, 3 prefer expert 1 then 0. First choices fill the queues before
    second choices (GShard), so expert 0 keeps tokens 0, 1 and expert 1 keeps tokens 2, 3: the four second choices
    are dropped, although in plain token order tokens 0, 1 would have taken expert 1's two slots."""
    layer = moe_layer(n_expert=4, top_k=2, capacity_factor=1.0).train()
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0], layer.router.weight[0, 1] = 3.0, 1.0
        layer.router.weight[1, 0], layer.router.weight[1, 1] = 1.0, 3.0
    x = torch.randn(1, 4, 32, dtype=torch.float64)
    x[0, :, :2] = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    with torch.no_grad():
        y, stats = layer(x, True)
    assert stats["dropped"].item() == 4
    p = torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=torch.float64).softmax(0)
    w_first = p[0] / (p[0] + p[1])  # renormalised over the top-2, not re-renormalised after the drop
    first = [0, 0, 1, 1]
    expected = torch.stack([w_first * swiglu(x[0, t], layer.w1[e], layer.w2[e], layer.w3[e])
                            for t, e in enumerate(first)])
    assert rel_diff(y[0], expected) < 1e-12


def test_capacity_all_to_one_expert_drops_the_tail_and_zeroes_it():
    """Every token routed to expert 0, capacity ceil(1 * 8 / 2) = 4: tokens 4..7 of each sequence are dropped
    and their feed-forward output is exactly 0 (they ride the residual)."""
    layer = moe_layer(n_expert=2, top_k=1, router="switch", capacity_factor=1.0).train()
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 10.0
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    x[..., 0] = 1.0
    with torch.no_grad():
        y, stats = layer(x, True)
    assert stats["dropped"].item() == 8
    assert torch.all(y[:, 4:] == 0)
    assert torch.all(y[:, :4].abs().sum(-1) > 0)
    # Dropless (capacity_factor=None), and eval mode even with a capacity factor, drop nothing.
    for dropless in (moe_layer(n_expert=2, top_k=1, router="switch").train(), layer.eval()):
        with torch.no_grad():
            dropless.router.weight.copy_(layer.router.weight)
            y, stats = dropless(x, True)
        assert stats["dropped"].item() == 0 and torch.all(y.abs().sum(-1) > 0)


def test_model_stats_losses_and_training_loss():
    torch.manual_seed(0)
    cfg = Config(**{**TINY, "n_layer": 4, "moe_every": 2, "capacity_factor": 1.0, "router_jitter": 0.01})
    model = randomize_(Model(cfg)).train()
    assert model.moe_layers == [1, 3]
    idx = torch.randint(0, 96, (2, 32))
    logits, loss = model(idx, idx)
    s = model.stats
    ce = F.cross_entropy(logits.view(-1, 96), idx.view(-1))
    expected = ce + cfg.aux_loss_coef * s["aux_loss"] + cfg.z_loss_coef * s["z_loss"]
    assert abs(loss.item() - expected.item()) < 1e-5
    assert s["aux_loss"].item() >= cfg.top_k - 1e-4  # E * sum f_i P_i >= k, equality when perfectly balanced
    assert s["z_loss"].item() > 0 and s["dropped_tokens"].item() > 0
    assert not any(k.startswith("load_") and k != "load_max" for k in s)
    loss.backward()
    assert model.layers[1].feed_forward.router.weight.grad.abs().sum() > 0
    # Eval: cross-entropy only, nothing dropped, per-layer expert load reported (fractions summing to 1).
    model.eval()
    with torch.no_grad():
        logits, loss = model(idx, idx)
    assert abs(loss.item() - F.cross_entropy(logits.view(-1, 96), idx.view(-1)).item()) < 1e-6
    s = model.stats
    assert s["dropped_tokens"].item() == 0
    for layer in (1, 3):
        loads = [s[f"load_l{layer}_e{e}"].item() for e in range(4)]
        assert abs(sum(loads) - 1.0) < 1e-6


def test_bf16_autocast_train_step_close_to_float32():
    """The dtype CUDA training uses: experts run as a bfloat16 grouped matmul, the router stays in float32."""
    torch.manual_seed(0)
    model = randomize_(Model(Config(**TINY)), std=0.1).train()
    idx = torch.randint(0, 96, (2, 32))
    _, loss32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss16 = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and abs(loss16.item() - loss32.item()) < 0.05
    loss16.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_active_params_and_flops():
    model = Model(Config(**TINY))
    per_expert = 3 * 32 * 48
    assert model.num_params() - model.num_params(active=True) == 2 * (4 - 2) * per_expert
    assert model.flops_per_token() == 6 * model.num_params(active=True) + 12 * 2 * 32 * 32


def test_bad_configs_raise():
    for bad in (dict(n_embd=30), dict(router="switch"), dict(top_k=5), dict(router="expert_choice"),
                dict(moe_every=3), dict(capacity_factor=0.0), dict(ffn_hidden=50)):
        with pytest.raises(ValueError):
            Model(Config(**{**TINY, **bad}))
    with pytest.raises(ValueError, match="longer than block_size"):
        Model(Config(**TINY))(torch.zeros(1, 33, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------------
# Sparse upcycling


def dense_llama(seed=0):
    torch.manual_seed(seed)
    cfg = llama.Config(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=48)
    return randomize_(llama.Model(cfg).eval())


@pytest.mark.parametrize("moe_every", [1, 2])
def test_upcycled_model_equals_dense(moe_every):
    dense = dense_llama()
    cfg = Config(**{k: v for k, v in dense.config.__dict__.items() if k in Config.__dataclass_fields__},
                 n_expert=4, top_k=2, moe_every=moe_every)
    moe = Model(cfg).eval()
    moe.load_state_dict(adapt_weights(moe, dense.state_dict(), "llama", dataclasses.asdict(dense.config)))
    moe.double(), dense.double()
    idx = torch.randint(0, 96, (2, 24))
    with torch.no_grad():
        diff = rel_diff(moe(idx)[0], dense(idx)[0])
    assert diff < 1e-12, diff
    assert moe.layers[moe.moe_layers[0]].feed_forward.router.weight.std().item() < 0.01  # router starts small


def moe_config_of(dense, **moe):
    return Config(**{**{k: v for k, v in dense.config.__dict__.items() if k in Config.__dataclass_fields__}, **moe})


@pytest.mark.parametrize("router,top_k", [("mixtral", 2), ("switch", 1)])
def test_init_from_upcycles_a_llama_checkpoint(router, top_k):
    """What train.py --init_from does with a llama checkpoint and a moe config: adapt_weights(moe, weights, 'llama',
    the checkpoint's config dict). With the Mixtral router the upcycled model is the dense one exactly (float64)."""
    dense = dense_llama(1)
    sd, src_cfg = dense.state_dict(), dataclasses.asdict(dense.config)
    moe = Model(moe_config_of(dense, n_expert=4, top_k=top_k, router=router)).eval()
    moe.load_state_dict(adapt_weights(moe, sd, "llama", src_cfg))
    for i in moe.moe_layers:  # every expert a copy of the dense FFN, the router small
        ffn = moe.layers[i].feed_forward
        assert all(torch.equal(ffn.w1[e], sd[f"layers.{i}.feed_forward.w1.weight"]) for e in range(4))
        assert 0 < ffn.router.weight.std().item() < 0.01
    moe.double(), dense.double()
    idx = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        diff = rel_diff(moe(idx)[0], dense(idx)[0])
    assert diff < 1e-12 if router == "mixtral" else diff > 1e-3  # Switch scales the FFN by its probability ~1/E


def test_init_from_refuses_what_does_not_fit():
    dense = dense_llama(1)
    sd, src_cfg = dense.state_dict(), dataclasses.asdict(dense.config)
    moe = Model(moe_config_of(dense, n_expert=4))
    gpt = gpt2.Model(gpt2.Config(**{k: src_cfg[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}))
    with pytest.raises(ValueError, match="not a models/gpt2.py that maps here"):
        adapt_weights(moe, gpt.state_dict(), "gpt2", dataclasses.asdict(gpt.config))
    for source, cfg, match in (
            ("llama", {**src_cfg, "sliding_window": 8}, "sliding_window=8"),
            ("llama", {**src_cfg, "n_layer": 3}, r"n_layer=3 \(checkpoint\) vs 2"),
            ("llama", {**src_cfg, "rope_theta": 5e5}, "rope_theta=500000.0"),
            ("llama", {**src_cfg, "tie_embeddings": False}, "tie_embeddings=False")):
        with pytest.raises(ValueError, match=match):
            adapt_weights(moe, sd, source, cfg)
    wide = Model(moe_config_of(dense, n_expert=4, ffn_hidden=64))
    with pytest.raises(ValueError, match=r"ffn_hidden=48 \(checkpoint\) vs 64"):
        adapt_weights(wide, sd, "llama", src_cfg)


# ----------------------------------------------------------------------------------------------------------------
# Generation


def test_cached_generate_equals_full_forward_greedy():
    torch.manual_seed(3)
    model = randomize_(Model(Config(**{**TINY, "moe_every": 2, "n_layer": 2}))).eval().double()
    idx = torch.randint(0, 96, (2, 5))
    out = model.generate(idx, 20, temperature=0)
    with torch.no_grad():
        seq = full_forward_greedy(model, idx, 20)  # 25 tokens, within block_size 32: the whole sequence each step
    assert torch.equal(out, seq)
    assert seq[:, 5:].unique().numel() > 3  # not a single repeated token
    # Per-step logits agree too: the cache path against a full forward over the same tokens.
    with torch.no_grad():
        step = cached_step_logits(model, seq[:, :24], 5)[:, 4:]
        full = model(seq[:, :24])[0][:, 4:]
    assert rel_diff(step, full) < 1e-12


def test_decode_step_runs_only_the_routed_rows(monkeypatch):
    """A one-token step sends its k assignments through only the chosen experts (experts_loop: k rows per MoE layer,
    where the grouped buffer would hold up to N*k + (E+1)*(GROUP_ALIGN-1) rows); a long prefill takes the grouped
    path. Both paths compute the same function: the step's logits equal those with the grouped path forced."""
    torch.manual_seed(4)
    model = randomize_(Model(Config(**TINY))).eval().double()  # E=4: loop up to 4 * 8 = 32 assignments
    idx = torch.randint(0, 96, (1, 25))
    rows = {"experts_loop": [], "experts_grouped": []}
    for name in rows:
        def spy(self, x, experts, keep, _f=getattr(MoE, name), _rows=rows[name]):
            _rows.append(experts.numel())  # (token, expert) assignments this call processes
            return _f(self, x, experts, keep)
        monkeypatch.setattr(MoE, name, spy)
    model.setup_cache(1, idx.device, torch.float64)
    with torch.no_grad():
        model(idx[:, :24], start_pos=0)  # prefill: 48 assignments per MoE layer
        assert rows == {"experts_loop": [], "experts_grouped": [48, 48]}
        step = model(idx[:, 24:], start_pos=24)[0]
        assert rows["experts_loop"] == [2, 2] and rows["experts_grouped"] == [48, 48]  # top_k rows per MoE layer
        monkeypatch.setattr(MoE, "experts_forward", MoE.experts_grouped)
        model(idx[:, :24], start_pos=0)
        grouped = model(idx[:, 24:], start_pos=24)[0]
    model.free_cache()
    assert rel_diff(step, grouped) < 1e-12


@pytest.mark.parametrize("router,top_k,capacity_factor",
                         [("mixtral", 2, 1.0), ("mixtral", 3, None), ("switch", 1, 1.0)])
def test_expert_paths_agree_with_dropped_assignments(router, top_k, capacity_factor):
    """experts_loop (the plain definition) and experts_grouped (its fast version) on the same routing, capacity drops
    included (training), float64."""
    layer = moe_layer(n_expert=5, top_k=top_k, router=router, capacity_factor=capacity_factor).train()
    x = torch.randn(2, 13, 32, dtype=torch.float64).view(-1, 32)
    with torch.no_grad():
        _, _, experts, _ = layer.route(x)
        keep = torch.ones_like(experts, dtype=torch.bool) if capacity_factor is None else \
            layer.capacity_mask(experts, 2, 13)
        assert keep.all() == (capacity_factor is None)
        y_loop, y_grouped = layer.experts_loop(x, experts, keep), layer.experts_grouped(x, experts, keep)
    assert torch.all(y_loop[~keep] == 0) and torch.all(y_loop[keep].abs().sum(-1) > 0)
    assert rel_diff(y_loop, y_grouped) < 1e-12
