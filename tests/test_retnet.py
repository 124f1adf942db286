"""Tests for models/retnet.py: the three retention forms agree, generation is incremental and exact, long sequences
stay finite, the recurrent state keeps decaying under bf16, and the model matches torchscale's RetNetDecoder (the
authors' code) on a tiny config.

Comparisons between forms, cached and full paths, and with torchscale run in float64 with bounds near float64
rounding (a float32 bound such as 1e-5 depends on the CPU's summation order); one float32 smoke check remains."""

import contextlib
import math
import sys
import types

import pytest
import torch

from conftest import cached_step_logits, rel_diff, sharpen, tokens
from models.retnet import (Config, Model, advance_state, decay_rates, retention_chunkwise, retention_parallel,
                           retention_recurrent)

V = 97


def make_model(scale=1.0, emb_scale=None, seed=0, dtype=torch.float64, **kw):
    """A tiny model in dtype (float64 unless a test is about float32 or bf16). scale > 1 multiplies the blocks'
    weight matrices (emb_scale, default scale, the tied embedding) so that retention, not the residual identity,
    drives the logits (with std 0.02 they are nearly flat and any form would look 'equal')."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=32, chunk_size=8)
    cfg.update(kw)
    model = Model(Config(**cfg)).eval()
    sharpen(model, lambda name, p: (scale if name.startswith("transformer.h.") else (emb_scale or scale))
            if p.dim() == 2 else 1.0)
    return model.to(dtype)


def set_mode(model, mode):
    for block in model.transformer.h:
        block.retention.mode = mode


def forward_mode(model, idx, mode):
    set_mode(model, mode)
    logits, _ = model(idx)
    return logits


TIGHT = 1e-12  # float64, relative: the forms and torchscale agree to 6e-16 .. 2e-14; room for any CPU


# ----------------------------------------------------------------------------------------------------------------
# The three forms


@pytest.mark.parametrize("T,chunk", [(5, 4), (16, 16), (37, 8), (64, 12), (30, 1), (9, 64)])
def test_retention_forms_equal_raw(T, chunk):
    """Before any normalisation: (QK^T ⊙ D) V by the parallel, recurrent and chunkwise forms, with 8 heads so the
    decays span gamma = 1 - 2^-5 .. 1 - 2^-12, chunk sizes dividing T or not, 1, and larger than T."""
    torch.manual_seed(T)
    B, H, hk, hv = 2, 8, 8, 6
    f64 = dict(dtype=torch.float64)
    q, k, v = torch.randn(B, H, T, hk, **f64), torch.randn(B, H, T, hk, **f64), torch.randn(B, H, T, hv, **f64)
    log_gamma = decay_rates(H, "cpu", torch.float64)
    par = retention_parallel(q, k, v, log_gamma)
    rec, S = retention_recurrent(q, k, v, log_gamma, torch.zeros(B, H, hk, hv, **f64))
    chk = retention_chunkwise(q, k, v, log_gamma, chunk)
    assert rec.dtype == chk.dtype == S.dtype == torch.float64
    assert rel_diff(rec, par) < TIGHT, rel_diff(rec, par)
    assert rel_diff(chk, par) < TIGHT, rel_diff(chk, par)
    # the closed-form state after the sequence equals the recurrent form's
    assert rel_diff(advance_state(torch.zeros(B, H, hk, hv, **f64), k, v, log_gamma), S) < TIGHT


@pytest.mark.parametrize("T", [1, 7, 8, 21, 48, 61])
def test_model_forms_agree(T):
    """Full-model logits: parallel == chunkwise (chunk 8, T divisible or not) == recurrent (one token at a time)."""
    model = make_model(scale=4.0)
    idx = tokens(2, T, V, seed=T)
    with torch.no_grad():
        par = forward_mode(model, idx, "parallel")
        chk = forward_mode(model, idx, "chunkwise")
        rec = cached_step_logits(model, idx, 1)  # token by token: the recurrent form only
    assert par.dtype == torch.float64 and par.std() > 0.3  # logits are not flat: the comparison means something
    assert rel_diff(chk, par) < TIGHT, rel_diff(chk, par)
    assert rel_diff(rec, par) < TIGHT, rel_diff(rec, par)


def test_chunkwise_and_parallel_gradients_agree():
    """Training with either form gives the same loss and gradients (T = 29 is not a multiple of chunk_size 8)."""
    idx = tokens(2, 29, V, seed=1)
    tgt = tokens(2, 29, V, seed=2)
    grads, losses = [], []
    for mode in ("parallel", "chunkwise"):
        model = make_model(scale=3.0, retention_mode=mode).train()
        _, loss = model(idx, tgt)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert abs(losses[0] - losses[1]) < TIGHT * losses[0]
    assert torch.isfinite(grads[0]).all()
    assert rel_diff(grads[1], grads[0]) < TIGHT, rel_diff(grads[1], grads[0])


def test_prompt_chunks_then_tokens_match_parallel():
    """The generation path: a prompt chunk from position 0, a second multi-token chunk continuing from the state,
    then single recurrent steps, all equal the parallel forward of the whole sequence."""
    model = make_model(scale=4.0)
    idx = tokens(2, 40, V, seed=3)
    with torch.no_grad():
        full = forward_mode(model, idx, "parallel")
        model.setup_cache(2, "cpu", torch.float64)
        parts = [model(idx[:, :19], start_pos=0)[0], model(idx[:, 19:32], start_pos=19)[0]]
        parts += [model(idx[:, t:t + 1], start_pos=t)[0] for t in range(32, 40)]
        model.free_cache()
    assert rel_diff(torch.cat(parts, dim=1), full) < TIGHT


# ----------------------------------------------------------------------------------------------------------------
# Generation


def test_generate_equals_greedy_full_forwards():
    """generate (prompt once, then recurrent steps) == greedy decoding by re-running the parallel form on the whole
    sequence each step; tokens and the logits behind them. It runs past block_size (16): no length limit."""
    model = make_model(scale=8.0, emb_scale=5.0, block_size=16)  # tokens vary; the top-2 logit gap stays > 1e-3
    prompt = tokens(2, 11, V, seed=4)
    out = model.generate(prompt, max_new_tokens=30, temperature=0)
    assert out.shape == (2, 41)
    assert torch.equal(out[:, :11], prompt)

    seq = prompt
    for _ in range(30):
        logits = forward_mode(model, seq, "parallel")
        seq = torch.cat((seq, logits[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(out, seq)
    assert len(set(seq[0, 11:].tolist())) > 3  # not one repeated token
    # the logits the incremental path saw for every generated token
    with torch.no_grad():
        model.setup_cache(2, "cpu", torch.float64)
        inc = [model(out[:, :11], start_pos=0)[0][:, -1:]]
        inc += [model(out[:, t:t + 1], start_pos=t)[0] for t in range(11, 40)]
        model.free_cache()
        full = forward_mode(model, out[:, :40], "parallel")[:, 10:]
    assert rel_diff(torch.cat(inc, dim=1), full) < TIGHT


def test_generate_frees_state_and_samples():
    model = make_model(dtype=torch.float32)
    idx = torch.zeros(3, 1, dtype=torch.long)
    out = model.generate(idx, 5, temperature=1.0, top_k=10, top_p=0.9)
    assert out.shape == (3, 6) and out.max() < V
    assert all(b.retention.state is None for b in model.transformer.h)


# ----------------------------------------------------------------------------------------------------------------
# Long sequences, init loss, dtypes, config errors


def run_4096(model, idx):
    T = idx.size(1)
    with torch.no_grad():
        par = forward_mode(model, idx, "parallel")
        chk = forward_mode(model, idx, "chunkwise")
        model.setup_cache(1, "cpu", model.lm_head.weight.dtype)
        model(idx[:, :T - 6], start_pos=0)
        rec = torch.cat([model(idx[:, t:t + 1], start_pos=t)[0] for t in range(T - 6, T)], dim=1)
        model.free_cache()
    return par, chk, rec


def test_no_overflow_at_4096():
    """T = 4096 with 4 heads (gamma up to 1 - 2^-8): in float32 (where exp overflows first) parallel, chunkwise and,
    after a 4090-token prompt, recurrent steps are finite; in float64 the three agree."""
    model = make_model(scale=4.0, n_layer=1, n_head=4, n_embd=32, vocab_size=50, chunk_size=64, dtype=torch.float32)
    idx = tokens(1, 4096, 50, seed=5)
    assert all(torch.isfinite(out).all() for out in run_4096(model, idx))
    par, chk, rec = run_4096(model.double(), idx)
    assert rel_diff(chk, par) < TIGHT, rel_diff(chk, par)
    assert rel_diff(rec, par[:, -6:]) < TIGHT, rel_diff(rec, par[:, -6:])


def test_loss_at_init_is_ln_vocab():
    model = make_model(vocab_size=100, n_layer=2, dtype=torch.float32)
    g = torch.Generator().manual_seed(6)
    idx, tgt = torch.randint(0, 100, (4, 32), generator=g), torch.randint(0, 100, (4, 32), generator=g)
    tgt[0, :5] = -1  # ignored positions
    _, loss = model(idx, tgt)
    assert abs(loss.item() - math.log(100)) < 0.1


def test_bf16_autocast_and_bf16_weights():
    """CPU stand-in for CUDA bf16 autocast: both training forms and generate run, finite, close to float32."""
    model = make_model(scale=2.0, dtype=torch.float32)
    idx = tokens(2, 21, V, seed=7)
    ref = forward_mode(model, idx, "parallel")
    for mode in ("parallel", "chunkwise"):
        set_mode(model, mode)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = model(idx, idx)
            loss.backward()
        assert torch.isfinite(logits.float()).all()
        assert rel_diff(logits.float(), ref) < 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.generate(idx[:, :5], 4, temperature=0).shape == (2, 9)
    model.to(torch.bfloat16)
    assert model.generate(idx[:, :5], 4, temperature=0).shape == (2, 9)


def test_bf16_recurrent_decoding_stays_close_to_float32():
    """8 heads (gamma_h = 1 - 2^(-5-h) up to 1 - 2^-12) under bf16 autocast: a 20-token prompt (chunkwise form from
    the state, closed-form state update), then 280 recurrent steps, against the float32 model's parallel forward.
    The state and its decays are float32: the error stays at bf16's level (~0.012 relative here) instead of
    growing with the position (0.013 -> 0.074 over 300 positions when gamma was rounded to bf16: heads 4..7 then
    decay by exactly 1.0 and their state only grows)."""
    model = make_model(scale=2.0, n_head=8, n_embd=64, dtype=torch.float32)
    T, P = 300, 20
    idx = tokens(2, T, V, seed=9)
    with torch.no_grad():
        ref = forward_mode(model, idx, "parallel")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.setup_cache(2, "cpu", torch.bfloat16)  # the compute dtype, as generate passes it
            assert all(b.retention.state.dtype == torch.float32 for b in model.transformer.h)
            out = [model(idx[:, :12], start_pos=0)[0], model(idx[:, 12:P], start_pos=12)[0]]
            out += [model(idx[:, t:t + 1], start_pos=t)[0] for t in range(P, T)]
            model.free_cache()
    out = torch.cat(out, dim=1).float()
    err = (out - ref).abs().amax(dim=(0, 2)) / ref.abs().amax(dim=(0, 2))  # per position, relative
    assert err[100:].max().item() < 0.03, err[100:].max().item()


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16, torch.float64])
def test_state_decays_below_one_in_every_head(weights):
    """The decay that multiplies the model's state, in a recurrent step and in the closed-form update after a
    prompt chunk, is gamma_h < 1 for every head: under bf16 autocast, with bf16 weights, and in float64 (gamma
    rounded to bf16 is exactly 1 for h >= 4). With W_K = 0 nothing is added, so the state is only decayed."""
    model = make_model(n_head=8, n_embd=64, dtype=weights)
    r = model.transformer.h[0].retention
    idx = tokens(1, 4, V, seed=10)
    compute = weights if weights == torch.float64 else torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=weights == torch.float32):
        r.k_proj.weight.zero_()
        model.setup_cache(1, "cpu", compute)
        assert r.state.dtype == torch.promote_types(weights, torch.float32)
        r.state.fill_(1.0)
        model(idx[:, :1], start_pos=0)  # one token: the recurrent form
        after_step = r.state[0, :, 0, 0].double()
        model(idx[:, 1:], start_pos=1)  # three tokens: chunkwise, then advance_state
        after_chunk = r.state[0, :, 0, 0].double()
        model.free_cache()
    gamma = 1 - 2.0 ** (-5 - torch.arange(8, dtype=torch.float64))
    assert (after_step < 1).all() and (after_chunk < after_step).all(), (after_step, after_chunk)
    assert (after_step - gamma).abs().max().item() < 1e-7
    assert (after_chunk - gamma ** 4).abs().max().item() < 1e-6


@pytest.mark.parametrize("kw", [dict(n_embd=30, n_head=4), dict(n_embd=24, n_head=8), dict(retention_mode="rnn"),
                                dict(chunk_size=0)])
def test_bad_config_raises(kw):
    cfg = dict(vocab_size=V, n_layer=1, n_head=2, n_embd=32)
    cfg.update(kw)
    with pytest.raises(ValueError):
        Model(Config(**cfg))


def test_flops_and_params():
    model = make_model()
    d, L = 32, 2
    # per block: q, k (d^2 each), v, g, out (2 d^2 each), GeGLU 3 * d * int(4d/3), two RMSNorm weights
    per_block = 2 * d * d + 3 * 2 * d * d + 3 * d * int(4 / 3 * d) + 2 * d
    assert model.num_params() == V * d + L * per_block + d
    assert model.flops_per_token() == 6 * model.num_params() + 6 * L * 64 * (d + 2 * d)


# ----------------------------------------------------------------------------------------------------------------
# Parity with torchscale's RetNetDecoder (the authors' implementation)

TORCHSCALE_INSTALL = ("pip install --no-deps torchscale==0.3.0 && "
                      "pip install --no-deps --no-build-isolation fairscale==0.4.0")


def import_torchscale(monkeypatch):
    """torchscale imports timm only for drop_path (unused at drop_path_rate 0): stub it when timm is absent."""
    try:
        import timm  # noqa: F401
    except ImportError:
        timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
        layers.drop_path = lambda x, drop_prob=0.0, training=False: x
        timm.models, models.layers = models, layers
        for name, mod in (("timm", timm), ("timm.models", models), ("timm.models.layers", layers)):
            monkeypatch.setitem(sys.modules, name, mod)
    try:
        from torchscale.architecture.config import RetNetConfig
        from torchscale.architecture.retnet import RetNetDecoder
    except ImportError as e:
        pytest.fail(f"torchscale is needed for this parity test ({e}); install it with: {TORCHSCALE_INSTALL}")
    return RetNetConfig, RetNetDecoder


def torchscale_copy(model, RetNetConfig, RetNetDecoder, **kw):
    """torchscale's RetNetDecoder with this model's weights (pure key renaming), in the model's dtype."""
    cfg = model.config
    args = RetNetConfig(vocab_size=cfg.vocab_size, decoder_embed_dim=cfg.n_embd,
                        decoder_value_embed_dim=cfg.value_factor * cfg.n_embd, decoder_retention_heads=cfg.n_head,
                        decoder_ffn_embed_dim=int(cfg.ffn_mult * cfg.n_embd), decoder_layers=cfg.n_layer,
                        activation_fn="gelu", share_decoder_input_output_embed=True, layernorm_eps=cfg.norm_eps,
                        **kw)
    ref = RetNetDecoder(args, embed_tokens=torch.nn.Embedding(cfg.vocab_size, cfg.n_embd)).eval()
    rename = {"transformer.wte.": "embed_tokens.", "transformer.h.": "layers.", "transformer.ln_f.": "layer_norm.",
              ".ln_1.": ".retention_layer_norm.", ".ln_2.": ".final_layer_norm.", "lm_head.": "output_projection."}
    sd = {}
    for k, v in model.state_dict().items():
        for a, b in rename.items():
            k = k.replace(a, b)
        sd[k] = v
    ref = ref.to(model.lm_head.weight.dtype)
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) == {"retnet_rel_pos.angle", "retnet_rel_pos.decay"}, (missing, unexpected)
    return ref


@contextlib.contextmanager
def torchscale_in_float64(refs):
    """torchscale rounds to float32 in three places even in a float64 model: RMSNorm and the GLU activation call
    x.float(), and RetNetRelPos computes its decay and angle buffers in float32. With those round trips (and
    nothing else) left out, it agrees with us to ~1e-15; with them, only to ~2.4e-7, float32's rounding.
    Here the buffers are its own formulas in float64, and inside the context .float() keeps float64 (and lowers
    nothing else). Run only the reference inside it: our model must reach float64 exactness without help."""
    for ref in refs:
        rel_pos = ref.retnet_rel_pos
        H = rel_pos.decay.numel()
        rel_pos.decay.copy_(torch.log(1 - 2 ** (-5 - torch.arange(H, dtype=torch.float64))))
        angle = 1.0 / (10000 ** torch.linspace(0, 1, rel_pos.angle.numel() // 2, dtype=torch.float64))
        rel_pos.angle.copy_(angle.unsqueeze(-1).repeat(1, 2).flatten())
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.Tensor, "float", lambda x: x.to(torch.promote_types(x.dtype, torch.float32)))
        yield


def torchscale_forms(model, idx, RetNetConfig, RetNetDecoder):
    """torchscale's parallel, chunkwise (chunk 8) and recurrent logits for idx with model's weights, in float64
    without its float32 round trips. Recurrent mode takes the whole prefix each step and an incremental_state."""
    refs = [torchscale_copy(model, RetNetConfig, RetNetDecoder, **kw)
            for kw in ({}, dict(chunkwise_recurrent=True, recurrent_chunk_size=8), {})]
    with torch.no_grad(), torchscale_in_float64(refs):
        parallel, chunked = refs[0](idx)[0], refs[1](idx)[0]  # T = 21 is padded to 24 inside torchscale
        state = {}
        recurrent = torch.cat([refs[2](idx[:, :t + 1], incremental_state=state)[0] for t in range(idx.size(1))], 1)
    return parallel, chunked, recurrent


def test_parity_with_torchscale(monkeypatch):
    """float64, all three of torchscale's forms against our parallel form, bound near float64 rounding."""
    RetNetConfig, RetNetDecoder = import_torchscale(monkeypatch)
    idx = tokens(2, 21, V, seed=8)
    # At the usual eps 1e-6 torchscale's parallel and recurrent forms apply the same normalisations as ours. Its
    # chunkwise form rescales differently (from its parallel form too): the rescalings cancel only where the group
    # norm is exactly scale-invariant, i.e. eps -> 0 (at 1e-6 it differs by ~1e-4). So all three at eps 1e-20.
    for eps, forms in ((1e-6, ("parallel", "recurrent")), (1e-20, ("parallel", "chunkwise", "recurrent"))):
        model = make_model(scale=4.0, norm_eps=eps)
        with torch.no_grad():
            ours = forward_mode(model, idx, "parallel")
        theirs = torchscale_forms(model, idx, RetNetConfig, RetNetDecoder)
        assert ours.dtype == torch.float64 and ours.std() > 0.3
        for form, logits in zip(("parallel", "chunkwise", "recurrent"), theirs):
            if form in forms:
                assert logits.dtype == torch.float64
                print(f"torchscale {form} at eps {eps}: max rel diff {rel_diff(ours, logits):.1e}")
                assert rel_diff(ours, logits) < TIGHT, (form, eps, rel_diff(ours, logits))


def test_parity_with_torchscale_float32_smoke(monkeypatch):
    """The same in float32, as trained, with a bound that holds on any CPU (summation order differs)."""
    RetNetConfig, RetNetDecoder = import_torchscale(monkeypatch)
    idx = tokens(2, 21, V, seed=8)
    model = make_model(scale=4.0, dtype=torch.float32)
    ref = torchscale_copy(model, RetNetConfig, RetNetDecoder)
    with torch.no_grad():
        ours, theirs = forward_mode(model, idx, "parallel"), ref(idx)[0]
    assert theirs.dtype == torch.float32
    assert rel_diff(ours, theirs) < 1e-4, rel_diff(ours, theirs)
