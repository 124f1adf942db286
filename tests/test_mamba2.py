"""models/mamba2.py: the chunked SSD form against the plain recurrence and the quadratic (attention) form written
here, not in the model; parity with transformers' Mamba2ForCausalLM (logits and greedy generation); recurrent
decoding against the full forward; stability at T = 4096; init. CPU, tiny configs.

Comparisons run in float64 with bounds near float64 rounding (a float32 bound depends on the CPU's summation
order); one float32 smoke check remains."""

import contextlib
import math

import pytest
import torch
import transformers
import transformers.models.mamba2.modeling_mamba2 as hf_mamba2

from conftest import bf16_autocast_run, cached_step_logits, rel_diff, scale_up, tokens
from models.mamba2 import Config, Model, decay_mask, ssd, ssd_step

V = 97  # vocabulary of the tiny test models
TIGHT = 1e-12  # float64, relative to the scale of what is compared: measured 1e-16 .. 3e-15


def tiny(**kw):
    cfg = dict(block_size=64, vocab_size=V, n_layer=2, d_model=32, d_state=8, head_dim=16, chunk_size=16)
    cfg.update(kw)
    return Config(**cfg)


def scale_up_mamba2(model, std=0.3, seed=0):
    """conftest's scale_up (norm gains in 0.5..1.5, weights with std) but A_log, D and dt_bias with std 1, so a
    mis-mapped head would show."""
    return scale_up(model, lambda name: 1.0 if name.endswith(("A_log", ".D", "dt_bias")) else std, seed)


def reference_recurrence(x, dt, A, B, C, h0=None):
    """The recurrence as written in the paper, one step at a time: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,
    y_t = h_t C_t. x (b, l, H, P); dt (b, l, H); A (H,); B, C (b, l, G, N); head h uses group h // (H / G)."""
    b, l, H, P = x.shape
    G, N = B.shape[2:]
    group = torch.arange(H) // (H // G)
    h = h0.clone() if h0 is not None else torch.zeros(b, H, P, N, dtype=x.dtype)
    ys = []
    for t in range(l):
        Bt, Ct = B[:, t, group], C[:, t, group]  # (b, H, N)
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ct))
    return torch.stack(ys, dim=1), h


def attention_form(x, dt, A, B, C):
    """The dual, quadratic form from a zero state (section 5): y = (L o C B^T) (dt x) with the full l x l mask
    L[t, s] = exp(sum_{s<k<=t} dt_k A), built here from explicit sums."""
    b, l, H, P = x.shape
    G = B.shape[2]
    group = torch.arange(H) // (H // G)
    a = dt * A  # (b, l, H)
    seg = torch.stack([torch.stack([a[:, s + 1:t + 1].sum(1) for s in range(l)], 1) for t in range(l)], 1)  # (b,t,s,H)
    causal = torch.ones(l, l, dtype=torch.bool).tril()[None, :, :, None]
    L = torch.where(causal, torch.exp(seg.clamp(max=0)), 0)
    CB = torch.einsum("bthn,bshn->btsh", C[:, :, group], B[:, :, group])
    return torch.einsum("btsh,bshp->bthp", L * CB, x * dt[..., None])


def ssd_inputs(b, l, H, P, G, N, log_dt_range=(-7.0, 1.0), seed=0, dtype=torch.float64):
    """Random inputs; dt log-uniform in exp(log_dt_range), A = -exp(A_log) with A_log ~ N(1, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, H, P, generator=g)
    lo, hi = log_dt_range
    dt = torch.exp(lo + (hi - lo) * torch.rand(b, l, H, generator=g))
    A = -torch.exp(1.0 + torch.randn(H, generator=g))
    B, C = torch.randn(b, l, G, N, generator=g), torch.randn(b, l, G, N, generator=g)
    h0 = torch.randn(b, H, P, N, generator=g)
    return tuple(t.to(dtype) for t in (x, dt, A, B, C, h0))


@contextlib.contextmanager
def hf_in_float64():
    """transformers' Mamba2 rounds to float32 in several places even in a float64 model: .float() on A, x, B, C, dt
    and the logits, .to(torch.float32) in Mamba2RMSNorm and MambaRMSNormGated, and the residual stream
    (residual_in_fp32). With those round trips it agrees with us only to ~1e-7, float32's rounding; left out
    (nothing else changed), to ~2e-15. Inside this context .float() keeps float64 (and lowers nothing else) and
    both norms are their own formulas in the input's dtype; build the model with residual_in_fp32=False. Run only
    the reference inside it: our model must reach float64 exactness without help."""
    def rms_norm(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def gated_rms_norm(self, h, gate=None):
        h = (h * torch.nn.functional.silu(gate)).unflatten(-1, (-1, self.group_size))
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)).flatten(-2)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.Tensor, "float", lambda x: x.to(torch.promote_types(x.dtype, torch.float32)))
        m.setattr(hf_mamba2.Mamba2RMSNorm, "forward", rms_norm)
        m.setattr(hf_mamba2.MambaRMSNormGated, "forward", gated_rms_norm)
        yield


def hf_from(model, **overrides):
    cfg_cls, kwargs, model_cls, sd = model.to_hf()
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**kwargs, **overrides})).eval()
    hf.load_state_dict(sd)
    return hf.to(model.lm_head.weight.dtype)


# ----------------------------------------------------------------------------------------------------------------
# The SSD layer: chunked form, recurrence, attention form


@pytest.mark.parametrize("l,Q,G", [(1, 16, 1), (7, 16, 1), (16, 16, 2), (50, 16, 2), (50, 7, 1), (64, 256, 4)])
def test_chunked_ssd_equals_recurrence(l, Q, G):
    x, dt, A, B, C, h0 = ssd_inputs(2, l, 4, 3, G, 5)
    for init in (None, h0):
        y, h = ssd(x, dt, A, B, C, Q, init)
        y_ref, h_ref = reference_recurrence(x, dt, A, B, C, init)
        assert y.shape == (2, l, 4, 3) and h.shape == (2, 4, 3, 5) and y.dtype == h.dtype == torch.float64
        assert rel_diff(y, y_ref) < TIGHT and rel_diff(h, h_ref) < TIGHT


def test_attention_form_equals_recurrence():
    """The duality itself: the masked-attention form and the recurrence compute the same y."""
    x, dt, A, B, C, _ = ssd_inputs(2, 20, 4, 3, 2, 5)
    y_att = attention_form(x, dt, A, B, C)
    assert rel_diff(y_att, reference_recurrence(x, dt, A, B, C)[0]) < TIGHT
    assert rel_diff(ssd(x, dt, A, B, C, 6)[0], y_att) < TIGHT


def test_chunked_ssd_gradients_equal_recurrence():
    inputs = [t.requires_grad_() for t in ssd_inputs(2, 30, 4, 3, 2, 5)]
    x, dt, A, B, C, h0 = inputs
    y, h = ssd(x, dt, A, B, C, 8, h0)
    (y.sin().sum() + h.cos().sum()).backward()
    grads = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    y, h = reference_recurrence(*inputs)
    (y.sin().sum() + h.cos().sum()).backward()
    for g, t in zip(grads, inputs):
        assert rel_diff(g, t.grad) < TIGHT


def test_step_equals_one_recurrence_step():
    x, dt, A, B, C, h0 = ssd_inputs(3, 1, 4, 3, 2, 5)
    y, h = ssd_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    y_ref, h_ref = reference_recurrence(x, dt, A, B, C, h0)
    assert rel_diff(y, y_ref[:, 0]) < TIGHT and rel_diff(h, h_ref) < TIGHT


def test_decay_mask_has_no_cancellation():
    """A large first log-decay (in no segment: L[t, s] sums a_{s+1..t}), then small ones: exp(cumsum[t] - cumsum[s])
    would lose the small segments to the rounding of the large cumsums (float32: ~1e-3 relative error here); summed
    per segment, they are exact to rounding."""
    a = torch.full((16,), -1e-3, dtype=torch.float64)
    a[0] = -1e4
    exact = torch.tensor([[math.exp(-1e-3 * (t - s)) if s <= t else 0.0 for s in range(16)] for t in range(16)],
                         dtype=torch.float64)
    assert rel_diff(decay_mask(a.float()).double(), exact) < 1e-6
    c = a.float().cumsum(0)
    naive = torch.exp(c[:, None] - c[None, :]).tril().double()
    assert rel_diff(naive, exact) > 1e-4  # what the cancellation would cost


def test_long_sequence_with_large_dt_is_finite_and_exact():
    # T = 4096 with dt up to e^5 ~ 150 and |A| up to ~50: per-step log-decays down to ~ -7000, a chunk's (256 steps)
    # down to ~ -1e6, far beyond exp's range either way. Finite in float32 with gradients, exact in float64.
    x, dt, A, B, C, h0 = ssd_inputs(1, 4096, 2, 4, 1, 4, log_dt_range=(-7.0, 5.0), dtype=torch.float32)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C)]
    y, h = ssd(*inputs, 256, h0)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    (y.square().mean() + h.square().mean()).backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)
    x, dt, A, B, C, h0 = ssd_inputs(1, 4096, 2, 4, 1, 4, log_dt_range=(-7.0, 5.0))
    y, h = ssd(x, dt, A, B, C, 256, h0)
    y_ref, h_ref = reference_recurrence(x, dt, A, B, C, h0)
    assert rel_diff(y, y_ref) < TIGHT and rel_diff(h, h_ref) < TIGHT


def test_model_at_4096_tokens_with_large_dt_is_finite():
    torch.manual_seed(0)
    model = Model(tiny(n_layer=1, d_model=16, d_state=4, head_dim=8, vocab_size=16, block_size=4096, chunk_size=256))
    with torch.no_grad():
        model.backbone.layers[0].mixer.dt_bias.copy_(torch.tensor([-5.0, 60.0, 30.0, 0.0]))  # softplus: dt up to 60
    idx = tokens(1, 4096, 16, seed=0)
    logits, loss = model(idx, targets=idx)
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Parity with transformers' Mamba2ForCausalLM (its pure-PyTorch path: the chunked scan of ssd_minimal)


def hf_parity(dtype, reference_context=contextlib.nullcontext(), n_groups=1, **hf_overrides):
    """Ours loaded from a random transformers model (from_hf_state_dict), both in dtype: (ours, theirs) logits."""
    torch.manual_seed(0)
    cfg = tiny(n_groups=n_groups)
    kw = {**Model(cfg).to_hf()[1], **hf_overrides}
    hf = scale_up_mamba2(transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**kw))).to(dtype)
    model = Model.from_hf_state_dict(hf.state_dict(), cfg).eval().to(dtype)
    idx = tokens(2, 50, V)  # 50: not a multiple of chunk_size 16, so the padded last chunk is exercised
    with torch.no_grad():
        ours = model(idx)[0]
        with reference_context:
            return ours, hf(idx, use_cache=False).logits


@pytest.mark.parametrize("n_groups", [1, 2])
def test_hf_parity_logits(n_groups):
    ours, ref = hf_parity(torch.float64, hf_in_float64(), n_groups=n_groups, residual_in_fp32=False)
    assert ours.dtype == ref.dtype == torch.float64
    assert ref.std().item() > 1.0  # far from flat
    print(f"float64 max rel diff vs transformers (n_groups={n_groups}): {rel_diff(ours, ref):.1e}")
    assert rel_diff(ours, ref) < TIGHT


def test_hf_parity_logits_float32_smoke():
    """As trained, transformers unchanged, with a bound that holds on any CPU (summation order differs)."""
    ours, ref = hf_parity(torch.float32)
    assert ours.dtype == ref.dtype == torch.float32
    assert rel_diff(ours, ref) < 1e-4


def test_to_hf_greedy_generation_matches_hf():
    """float64: the same tokens, and HF's per-step logits (its cached path) equal our full forward."""
    torch.manual_seed(0)
    model = scale_up_mamba2(Model(tiny(n_groups=2))).double()
    hf = hf_from(model, residual_in_fp32=False)
    prompt, n = tokens(2, 9, V), 24
    ours = model.generate(prompt, n, temperature=0)
    with hf_in_float64():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == ours.shape == (2, 9 + n)
    assert torch.equal(out.sequences, ours)
    assert len(set(ours[:, 9:].flatten().tolist())) > 3  # not one token repeated
    with torch.no_grad():
        full, _ = model(ours[:, :-1])
    # generate hands out its step logits rounded to float32, so one rounding (2^-24 of each value) is the floor.
    hf_steps = torch.stack(out.logits, dim=1).double()  # (B, n, V)
    print(f"max rel diff vs transformers' cached steps (float32-rounded): {rel_diff(full[:, 8:], hf_steps):.1e}")
    assert rel_diff(full[:, 8:], hf_steps) < 1e-7


def test_loads_mamba_ssm_names():
    """mamba_ssm checkpoints call the embedding backbone.embedding and may leave out the tied lm_head."""
    torch.manual_seed(0)
    model = Model(tiny())
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in model.state_dict().items()
          if k != "lm_head.weight"}
    loaded = Model.from_hf_state_dict(sd, tiny())
    idx = tokens(1, 10, V)
    assert torch.equal(loaded(idx)[0], model(idx)[0])


# ----------------------------------------------------------------------------------------------------------------
# Recurrent decoding


@pytest.mark.parametrize("prompt_len", [1, 20])
def test_recurrent_steps_equal_full_forward(prompt_len):
    torch.manual_seed(0)
    model = scale_up_mamba2(Model(tiny(chunk_size=8, n_groups=2))).double()  # prompt 20 spans 3 chunks
    idx = tokens(2, 40, V)
    with torch.no_grad():
        full, _ = model(idx)
        stepped = cached_step_logits(model, idx, prompt_len)
    assert stepped.dtype == torch.float64
    assert rel_diff(stepped, full) < TIGHT


def test_chunk_size_does_not_change_the_output():
    torch.manual_seed(0)
    model = scale_up_mamba2(Model(tiny())).double()
    idx = tokens(2, 45, V)
    outs = []
    with torch.no_grad():
        for Q in (1, 5, 16, 64):
            for block in model.backbone.layers:
                block.mixer.chunk_size = Q
            outs.append(model(idx)[0])
    assert all(rel_diff(o, outs[-1]) < TIGHT for o in outs)


def test_generation_state_is_constant_size_and_has_no_length_limit():
    torch.manual_seed(0)
    model = Model(tiny(block_size=16)).eval()
    sizes = []
    for T in (10, 300):  # a prompt far past block_size: nothing grows with the position
        model.setup_cache(2, "cpu", torch.float32)
        with torch.no_grad():
            model(tokens(2, T, V), start_pos=0)
            model(tokens(2, 1, V), start_pos=T)
        sizes.append([(tuple(b.mixer.conv_state.shape), tuple(b.mixer.ssm_state.shape)) for b in model.backbone.layers])
        model.free_cache()
    assert sizes[0] == sizes[1] == [((2, 3, 64 + 2 * 8), (2, 4, 16, 8))] * 2
    out = model.generate(tokens(2, 20, V), 30, temperature=0)
    assert out.shape == (2, 50)
    assert all(b.mixer.ssm_state is None and b.mixer.conv_state is None for b in model.backbone.layers)


def test_sampling_shapes_and_determinism():
    torch.manual_seed(0)
    model = Model(tiny()).eval()
    prompt = tokens(3, 4, V)
    torch.manual_seed(5)
    a = model.generate(prompt, 12, temperature=0.8, top_k=10, top_p=0.9)
    torch.manual_seed(5)
    b = model.generate(prompt, 12, temperature=0.8, top_k=10, top_p=0.9)
    assert a.shape == (3, 16) and torch.equal(a, b) and torch.equal(a[:, :4], prompt)
    with pytest.raises(ValueError, match="empty prompt"):
        model.generate(prompt[:, :0], 3)


def test_autocast_bf16_forward_and_generate():
    torch.manual_seed(0)
    model = Model(tiny())
    idx = tokens(2, 40, V)
    logits, loss, gen = bf16_autocast_run(model, idx)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert gen.shape == (2, 16)
    x, dt, A, B, C, h0 = ssd_inputs(2, 40, 4, 3, 1, 5, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the SSD's matmuls stay in float32 under autocast
        y, h = ssd(x, dt, A, B, C, 16, h0)
    assert y.dtype == h.dtype == torch.float32
    assert rel_diff(y.double(), reference_recurrence(*(t.double() for t in (x, dt, A, B, C, h0)))[0]) < 1e-5


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16, torch.float64])
def test_state_dtypes(weights):
    """The conv state holds inputs: the compute dtype. The SSM state is a long decayed sum: at least float32, and
    it stays so through a prompt and a step (float32 under bf16 autocast, float64 in a .double() model)."""
    torch.manual_seed(0)
    model = Model(tiny()).to(weights)
    autocast = weights == torch.float32
    compute = torch.bfloat16 if autocast else weights
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model.setup_cache(2, "cpu", compute)
        model(tokens(2, 5, V), start_pos=0)
        model(tokens(2, 1, V), start_pos=5)
    for b in model.backbone.layers:
        assert b.mixer.conv_state.dtype == compute
        assert b.mixer.ssm_state.dtype == torch.promote_types(weights, torch.float32)
    model.free_cache()


# ----------------------------------------------------------------------------------------------------------------
# Training path, init, config


def test_recompute_ssd_gives_equal_gradients():
    torch.manual_seed(0)
    a = Model(tiny()).double()
    b = Model(tiny(recompute_ssd=True)).double()
    b.load_state_dict(a.state_dict())
    idx, targets = tokens(2, 40, V), tokens(2, 40, V, seed=2)
    la, lb = a(idx, targets)[1], b(idx, targets)[1]
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=TIGHT)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert rel_diff(pb.grad, pa.grad) < TIGHT, name


def test_loss_at_init_is_ln_vocab():
    torch.manual_seed(0)
    model = Model(tiny())
    idx, targets = tokens(4, 64, V), tokens(4, 64, V, seed=2)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(V)) < 0.05
    masked = targets.clone()
    masked[:, ::2] = -1  # ignore_index=-1: only the other half counts
    logits, loss_masked = model(idx, masked)
    keep = masked != -1
    ref = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert loss_masked.item() == pytest.approx(ref.item(), rel=1e-6)


def test_init_follows_the_reference():
    torch.manual_seed(0)
    cfg = tiny(n_layer=4, d_model=64, head_dim=8)  # 16 heads
    model = Model(cfg)
    m = model.backbone.layers[0].mixer
    A = torch.exp(m.A_log)  # -A, uniform in [1, 16] per head
    assert m.A_log.shape == m.D.shape == m.dt_bias.shape == (16,)
    assert A.min().item() >= 1 and A.max().item() <= 16 and A.max().item() / A.min().item() > 2
    assert torch.equal(m.D.data, torch.ones(16))
    dt = torch.nn.functional.softplus(m.dt_bias)  # step sizes at init, log-uniform in [dt_min, dt_max]
    assert dt.min().item() >= cfg.dt_min * 0.999 and dt.max().item() <= cfg.dt_max * 1.001
    assert dt.max().item() / dt.min().item() > 10
    assert torch.equal(m.norm.weight.data, torch.ones(128))
    assert model.backbone.embeddings.weight is model.lm_head.weight
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert m.out_proj.weight.abs().max().item() <= 1 / math.sqrt(128) / math.sqrt(4)
    assert all(getattr(p, "_no_weight_decay", False) for p in (m.A_log, m.D, m.dt_bias))


def test_param_names_and_shapes_are_the_references():
    model = Model(tiny(n_groups=2))
    hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**model.to_hf()[1]))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in hf.state_dict().items()}


def test_param_count_and_flops():
    model = Model(tiny())
    d, E, N, H, K, G, Q = 32, 64, 8, 4, 4, 1, 16
    conv_dim = E + 2 * G * N
    per_layer = d * (E + conv_dim + H) + conv_dim * K + conv_dim + 3 * H + E + E * d + d
    assert model.num_params() == model.num_params(non_embedding=False) == 2 * per_layer + V * d + d
    assert model.flops_per_token() == 6 * model.num_params() + 3 * 2 * (2 * Q * (G * N + E) + 4 * E * N)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="divisible by head_dim"):
        Model(tiny(head_dim=24))  # 64 channels
    with pytest.raises(ValueError, match="n_groups"):
        Model(tiny(n_groups=3))  # 4 heads
    with pytest.raises(ValueError, match="d_state"):
        Model(tiny(d_state=0))
    with pytest.raises(ValueError, match="chunk_size"):
        Model(tiny(chunk_size=0))
    with pytest.raises(ValueError, match="d_conv"):
        Model(tiny(d_conv=1))
    with pytest.raises(ValueError, match="dt_min"):
        Model(tiny(dt_min=0.5, dt_max=0.1))
    with pytest.raises(ValueError, match="dt_limit"):
        Model(tiny(dt_limit=(0.1, 0.01)))


def test_dt_limit_clamps_both_forms_alike():
    """dt_limit (the reference's, after the softplus) is applied in the chunked form and in the step alike."""
    torch.manual_seed(0)
    model = scale_up_mamba2(Model(tiny(dt_limit=(0.01, 0.5)))).double()
    idx = tokens(2, 20, V)
    with torch.no_grad():
        full, _ = model(idx)
        assert rel_diff(cached_step_logits(model, idx, 5), full) < TIGHT
        free = scale_up_mamba2(Model(tiny())).double()(idx)[0]
    assert rel_diff(full, free) > 1e-3  # the clamp did something
