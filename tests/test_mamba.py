"""models/mamba.py: the chunked scan against a plain sequential scan (here, not in the model), parity with
transformers' MambaForCausalLM (logits and greedy generation), recurrent decoding against the full forward,
stability at T = 4096, init. CPU, tiny configs.

Comparisons (scan vs sequential, recurrent vs full, ours vs transformers) run in float64 with bounds near float64
rounding: a float32 bound such as 1e-5 depends on the CPU's summation order. One float32 smoke check remains."""

import contextlib
import math

import pytest
import torch
import transformers
import transformers.models.mamba.modeling_mamba as hf_mamba

from conftest import bf16_autocast_run, cached_step_logits, rel_diff, scale_up, tokens
from models.mamba import Config, Model, selective_scan, selective_step

V = 97  # vocabulary of the tiny test models


def tiny(**kw):
    cfg = dict(block_size=64, vocab_size=V, n_layer=2, d_model=32, d_state=8)
    cfg.update(kw)
    return Config(**cfg)


TIGHT = 1e-12  # float64, relative to the scale of what is compared: measured 1e-17 .. 5e-15


def scale_up_mamba(model, std=0.3, seed=0):
    """conftest's scale_up (norm gains in 0.5..1.5, weights with std) but A_log, D and dt bias with std 1, so a
    transposed or mis-mapped parameter would show."""
    return scale_up(model, lambda name: 1.0 if name.endswith(("A_log", ".D", "dt_proj.bias")) else std, seed)


def reference_scan(x, dt, A, B, C, h0=None):
    """The recurrence exactly as written in the paper, one step at a time (Algorithm 2, l sequential steps)."""
    b, l, E = x.shape
    h = h0 if h0 is not None else torch.zeros(b, E, A.shape[1], dtype=x.dtype)
    ys = []
    for t in range(l):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]  # (b, E, N)
        ys.append((h * C[:, t, None, :]).sum(-1))  # (b, E)
    return torch.stack(ys, dim=1), h


def scan_inputs(b, l, E, N, log_dt_range=(-7.0, 1.0), seed=0, dtype=torch.float64):
    """Random scan inputs; dt log-uniform in exp(log_dt_range), A = -exp(A_log) with A_log ~ N(1, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, E, generator=g)
    lo, hi = log_dt_range
    dt = torch.exp(lo + (hi - lo) * torch.rand(b, l, E, generator=g))
    A = -torch.exp(1.0 + torch.randn(E, N, generator=g))
    B, C = torch.randn(b, l, N, generator=g), torch.randn(b, l, N, generator=g)
    h0 = torch.randn(b, E, N, generator=g)
    return tuple(t.to(dtype) for t in (x, dt, A, B, C, h0))


@contextlib.contextmanager
def hf_in_float64():
    """transformers' Mamba rounds to float32 in several places even in a float64 model: .float() on A, B, x, D, dt's
    bias and the logits, MambaRMSNorm's .to(torch.float32), and the residual stream (residual_in_fp32). With those
    round trips it agrees with us only to ~5e-7, float32's rounding; left out (nothing else changed), to ~2e-15.
    Inside this context .float() keeps float64 (and lowers nothing else) and the norm is its own formula in the
    input's dtype; build the model with residual_in_fp32=False (a float64 residual is at least float32). Run only
    the reference inside it: our model must reach float64 exactness without help."""
    def rms_norm(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.Tensor, "float", lambda x: x.to(torch.promote_types(x.dtype, torch.float32)))
        m.setattr(hf_mamba.MambaRMSNorm, "forward", rms_norm)
        yield


def hf_from(model, **overrides):
    cfg_cls, kwargs, model_cls, sd = model.to_hf()
    hf = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**kwargs, **overrides})).eval()
    hf.load_state_dict(sd)
    return hf.to(model.lm_head.weight.dtype)


# ----------------------------------------------------------------------------------------------------------------
# The selective scan


@pytest.mark.parametrize("l", [1, 7, 16, 50, 64])
def test_chunked_scan_equals_sequential_reference(l):
    x, dt, A, B, C, h0 = scan_inputs(2, l, 6, 4)
    for init in (None, h0):
        y, h = selective_scan(x, dt, A, B, C, init)
        y_ref, h_ref = reference_scan(x, dt, A, B, C, init)
        assert y.shape == (2, l, 6) and h.shape == (2, 6, 4) and y.dtype == h.dtype == torch.float64
        assert rel_diff(y, y_ref) < TIGHT and rel_diff(h, h_ref) < TIGHT


def test_chunked_scan_gradients_equal_reference():
    inputs = [t.requires_grad_() for t in scan_inputs(2, 30, 5, 3)]
    y, h = selective_scan(*inputs)
    (y.sin().sum() + h.cos().sum()).backward()
    grads = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    y, h = reference_scan(*inputs)
    (y.sin().sum() + h.cos().sum()).backward()
    for g, t in zip(grads, inputs):
        assert rel_diff(g, t.grad) < TIGHT


def test_step_equals_one_scan_step():
    x, dt, A, B, C, h0 = scan_inputs(3, 1, 6, 4)
    y, h = selective_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    y_ref, h_ref = reference_scan(x, dt, A, B, C, h0)
    assert rel_diff(y, y_ref[:, 0]) < TIGHT and rel_diff(h, h_ref) < TIGHT


def test_long_sequence_with_large_dt_is_finite_and_exact():
    # T = 4096 with dt from 1e-3 to e^5 ~ 150 and |A| up to ~50: per-step log-decays down to ~ -7000, cumulative
    # ones within a chunk far below what exp(+x) could represent. The chunked scan must stay finite (float32, where
    # exp overflows first) and exact (float64).
    x, dt, A, B, C, h0 = scan_inputs(1, 4096, 4, 4, log_dt_range=(-7.0, 5.0), dtype=torch.float32)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C)]
    y, h = selective_scan(*inputs, h0)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    (y.square().mean() + h.square().mean()).backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)
    x, dt, A, B, C, h0 = scan_inputs(1, 4096, 4, 4, log_dt_range=(-7.0, 5.0))
    y, h = selective_scan(x, dt, A, B, C, h0)
    y_ref, h_ref = reference_scan(x, dt, A, B, C, h0)
    assert rel_diff(y, y_ref) < TIGHT and rel_diff(h, h_ref) < TIGHT


def test_model_at_4096_tokens_with_large_dt_is_finite():
    torch.manual_seed(0)
    model = Model(tiny(n_layer=1, d_model=8, d_state=4, vocab_size=16, block_size=4096))
    with torch.no_grad():
        model.backbone.layers[0].mixer.dt_proj.bias.uniform_(-5.0, 60.0)  # softplus: dt up to 60
    idx = tokens(1, 4096, 16, seed=0)
    logits, loss = model(idx, targets=idx)
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Parity with transformers' MambaForCausalLM (its pure-PyTorch path: a sequential scan)


def hf_parity(dtype, reference_context=contextlib.nullcontext(), **hf_overrides):
    """Ours loaded from a random transformers model (from_hf_state_dict), both in dtype: (ours, theirs) logits."""
    torch.manual_seed(0)
    kw = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=8, conv_kernel=4, expand=2,
              bos_token_id=None, eos_token_id=None, pad_token_id=None, **hf_overrides)
    hf = scale_up_mamba(transformers.MambaForCausalLM(transformers.MambaConfig(**kw))).to(dtype)
    model = Model.from_hf_state_dict(hf.state_dict(), tiny()).eval().to(dtype)
    idx = tokens(2, 50, V)  # 50: not a multiple of the chunk length, so the padded last chunk is exercised
    with torch.no_grad():
        ours = model(idx)[0]
        with reference_context:
            return ours, hf(idx, use_cache=False).logits


def test_hf_parity_logits():
    ours, ref = hf_parity(torch.float64, hf_in_float64(), residual_in_fp32=False)
    assert ours.dtype == ref.dtype == torch.float64
    assert ref.std().item() > 1.0  # far from flat
    print(f"float64 max rel diff vs transformers: {rel_diff(ours, ref):.1e}")
    assert rel_diff(ours, ref) < TIGHT


def test_hf_parity_logits_float32_smoke():
    """As trained, transformers unchanged, with a bound that holds on any CPU (summation order differs)."""
    ours, ref = hf_parity(torch.float32)
    assert ours.dtype == ref.dtype == torch.float32
    assert rel_diff(ours, ref) < 1e-4


def test_to_hf_greedy_generation_matches_hf():
    """float64: the same tokens, and HF's per-step logits (its cached path) equal our full forward."""
    torch.manual_seed(0)
    model = scale_up_mamba(Model(tiny())).double()
    hf = hf_from(model, residual_in_fp32=False)
    prompt, n = tokens(2, 9, V), 24
    ours = model.generate(prompt, n, temperature=0)
    with hf_in_float64():
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == ours.shape == (2, 9 + n)
    assert torch.equal(out.sequences, ours)
    assert len(set(ours[:, 9:].flatten().tolist())) > 3  # not one token repeated
    with torch.no_grad():  # HF's per-step logits (its cached path) against ours on the same sequence
        full, _ = model(ours[:, :-1])
    # generate hands out its step logits rounded to float32 (transformers/generation/utils.py casts each step's
    # logits to float32), so one rounding, at most 2^-24 of each value, is the floor here.
    hf_steps = torch.stack(out.logits, dim=1).double()  # (B, n, V)
    print(f"max rel diff vs transformers' cached steps (float32-rounded): {rel_diff(full[:, 8:], hf_steps):.1e}")
    assert rel_diff(full[:, 8:], hf_steps) < 1e-7


# ----------------------------------------------------------------------------------------------------------------
# Recurrent decoding


@pytest.mark.parametrize("prompt_len", [1, 20])
def test_recurrent_steps_equal_full_forward(prompt_len):
    torch.manual_seed(0)
    model = scale_up_mamba(Model(tiny())).double()
    idx = tokens(2, 40, V)
    with torch.no_grad():
        full, _ = model(idx)
        stepped = cached_step_logits(model, idx, prompt_len)
    assert stepped.dtype == torch.float64
    assert rel_diff(stepped, full) < TIGHT


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
    assert sizes[0] == sizes[1] == [((2, 64, 3), (2, 64, 8))] * 2
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


def test_autocast_bf16_forward_and_generate():
    torch.manual_seed(0)
    model = Model(tiny())
    idx = tokens(2, 32, V)
    logits, loss, gen = bf16_autocast_run(model, idx)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert gen.shape == (2, 16)


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
# Training path and init


def test_recompute_scan_gives_equal_gradients():
    torch.manual_seed(0)
    a = Model(tiny()).double()
    b = Model(tiny(recompute_scan=True)).double()
    b.load_state_dict(a.state_dict())
    idx, targets = tokens(2, 32, V), tokens(2, 32, V, seed=2)
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


def test_init_follows_the_paper():
    torch.manual_seed(0)
    cfg = tiny(n_layer=4)
    model = Model(cfg)
    m = model.backbone.layers[0].mixer
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 9.0)).expand(64, 8))  # S4D-Real: A = -(1..N)
    assert torch.equal(m.D.data, torch.ones(64))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)  # step sizes at init, log-uniform in [dt_min, dt_max]
    assert dt.min().item() >= cfg.dt_min * 0.999 and dt.max().item() <= cfg.dt_max * 1.001
    assert dt.max().item() / dt.min().item() > 10  # spread over the range, not a constant
    assert m.dt_rank == 2 and m.dt_proj.weight.abs().max().item() <= 2 ** -0.5
    assert model.backbone.embeddings.weight is model.lm_head.weight
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # out_proj: PyTorch's default uniform(+-1/sqrt(fan_in)) scaled by 1/sqrt(n_layer)
    assert m.out_proj.weight.abs().max().item() <= 1 / math.sqrt(64) / math.sqrt(4)


def test_param_count_and_flops():
    model = Model(tiny())
    d, E, N, R, K = 32, 64, 8, 2, 4
    per_layer = d * 2 * E + E * K + E + E * (R + 2 * N) + R * E + E + E * N + E + E * d + d
    assert model.num_params() == model.num_params(non_embedding=False) == 2 * per_layer + V * d + d
    assert model.flops_per_token() == 6 * model.num_params() + 21 * 2 * E * N


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="d_conv"):
        Model(tiny(d_conv=1))
    with pytest.raises(ValueError, match="dt_min"):
        Model(tiny(dt_min=0.5, dt_max=0.1))
    with pytest.raises(ValueError, match="d_state"):
        Model(tiny(d_state=0))
