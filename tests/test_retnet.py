"""Tests for models/retnet.py: the three retention forms agree, generation is incremental and exact, long sequences
stay finite, and the model matches torchscale's RetNetDecoder (the authors' code) on a tiny config."""

import math
import sys
import types

import pytest
import torch

from models.retnet import (Config, Model, advance_state, decay_rates, retention_chunkwise, retention_parallel,
                           retention_recurrent)

V = 97


def make_model(scale=1.0, emb_scale=None, seed=0, **kw):
    """A tiny model. scale > 1 multiplies the blocks' weight matrices (emb_scale, default scale, the tied embedding)
    so that retention, not the residual identity, drives the logits (with std 0.02 they are nearly flat and any
    form would look 'equal')."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=32, chunk_size=8)
    cfg.update(kw)
    model = Model(Config(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(scale if name.startswith("transformer.h.") else (emb_scale or scale))
    return model


def set_mode(model, mode):
    for block in model.transformer.h:
        block.retention.mode = mode


def forward_mode(model, idx, mode):
    set_mode(model, mode)
    logits, _ = model(idx)
    return logits


def forward_recurrent(model, idx):
    """Token by token through the recurrent form only (start_pos with one token per call)."""
    model.setup_state(idx.size(0), idx.device, torch.float32)
    out = [model(idx[:, t:t + 1], start_pos=t)[0] for t in range(idx.size(1))]
    model.setup_state(None, None, None)
    return torch.cat(out, dim=1)


def rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ----------------------------------------------------------------------------------------------------------------
# The three forms


@pytest.mark.parametrize("T,chunk", [(5, 4), (16, 16), (37, 8), (64, 12), (30, 1), (9, 64)])
def test_retention_forms_equal_raw(T, chunk):
    """Before any normalisation: (QK^T ⊙ D) V by the parallel, recurrent and chunkwise forms, with 8 heads so the
    decays span gamma = 1 - 2^-5 .. 1 - 2^-12, chunk sizes dividing T or not, 1, and larger than T."""
    torch.manual_seed(T)
    B, H, hk, hv = 2, 8, 8, 6
    q, k, v = torch.randn(B, H, T, hk), torch.randn(B, H, T, hk), torch.randn(B, H, T, hv)
    log_gamma = decay_rates(H, "cpu")
    par = retention_parallel(q, k, v, log_gamma)
    rec, S = retention_recurrent(q, k, v, log_gamma, torch.zeros(B, H, hk, hv))
    chk = retention_chunkwise(q, k, v, log_gamma, chunk)
    assert rel_diff(rec, par) < 1e-5
    assert rel_diff(chk, par) < 1e-5
    # the closed-form state after the sequence equals the recurrent form's
    assert rel_diff(advance_state(torch.zeros(B, H, hk, hv), k, v, log_gamma), S) < 1e-5


@pytest.mark.parametrize("T", [1, 7, 8, 21, 48, 61])
def test_model_forms_agree(T):
    """Full-model logits: parallel == chunkwise (chunk 8, T divisible or not) == recurrent (one token at a time)."""
    model = make_model(scale=4.0)
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(T))
    with torch.no_grad():
        par = forward_mode(model, idx, "parallel")
        chk = forward_mode(model, idx, "chunkwise")
        rec = forward_recurrent(model, idx)
    assert par.std() > 0.3  # logits are not flat: the comparison means something
    assert rel_diff(chk, par) < 1e-4, rel_diff(chk, par)
    assert rel_diff(rec, par) < 1e-4, rel_diff(rec, par)


def test_chunkwise_and_parallel_gradients_agree():
    """Training with either form gives the same loss and gradients (T = 29 is not a multiple of chunk_size 8)."""
    idx = torch.randint(0, V, (2, 29), generator=torch.Generator().manual_seed(1))
    tgt = torch.randint(0, V, (2, 29), generator=torch.Generator().manual_seed(2))
    grads, losses = [], []
    for mode in ("parallel", "chunkwise"):
        model = make_model(scale=3.0, retention_mode=mode).train()
        _, loss = model(idx, tgt)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert abs(losses[0] - losses[1]) < 1e-5
    assert torch.isfinite(grads[0]).all()
    assert rel_diff(grads[1], grads[0]) < 1e-4


def test_prompt_chunks_then_tokens_match_parallel():
    """The generation path: a prompt chunk from position 0, a second multi-token chunk continuing from the state,
    then single recurrent steps, all equal the parallel forward of the whole sequence."""
    model = make_model(scale=4.0)
    idx = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = forward_mode(model, idx, "parallel")
        model.setup_state(2, "cpu", torch.float32)
        parts = [model(idx[:, :19], start_pos=0)[0], model(idx[:, 19:32], start_pos=19)[0]]
        parts += [model(idx[:, t:t + 1], start_pos=t)[0] for t in range(32, 40)]
    assert rel_diff(torch.cat(parts, dim=1), full) < 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Generation


def test_generate_equals_greedy_full_forwards():
    """generate (prompt once, then recurrent steps) == greedy decoding by re-running the parallel form on the whole
    sequence each step; tokens and the logits behind them. It runs past block_size (16): no length limit."""
    model = make_model(scale=8.0, emb_scale=5.0, block_size=16)  # tokens vary; the top-2 logit gap stays > 1e-3
    prompt = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(4))
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
        model.setup_state(2, "cpu", torch.float32)
        inc = [model(out[:, :11], start_pos=0)[0][:, -1:]]
        inc += [model(out[:, t:t + 1], start_pos=t)[0] for t in range(11, 40)]
        full = forward_mode(model, out[:, :40], "parallel")[:, 10:]
    assert rel_diff(torch.cat(inc, dim=1), full) < 1e-4


def test_generate_frees_state_and_samples():
    model = make_model()
    idx = torch.zeros(3, 1, dtype=torch.long)
    out = model.generate(idx, 5, temperature=1.0, top_k=10, top_p=0.9)
    assert out.shape == (3, 6) and out.max() < V
    assert all(b.retention.state is None for b in model.transformer.h)


# ----------------------------------------------------------------------------------------------------------------
# Long sequences, init loss, dtypes, config errors


def test_no_overflow_at_4096():
    """T = 4096 with 4 heads (gamma up to 1 - 2^-8): parallel, chunkwise and, after a 4090-token prompt, recurrent
    steps are finite and agree."""
    model = make_model(scale=4.0, n_layer=1, n_head=4, n_embd=32, vocab_size=50, chunk_size=64)
    T = 4096
    idx = torch.randint(0, 50, (1, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        par = forward_mode(model, idx, "parallel")
        chk = forward_mode(model, idx, "chunkwise")
        model.setup_state(1, "cpu", torch.float32)
        model(idx[:, :T - 6], start_pos=0)
        rec = torch.cat([model(idx[:, t:t + 1], start_pos=t)[0] for t in range(T - 6, T)], dim=1)
    assert torch.isfinite(par).all() and torch.isfinite(chk).all() and torch.isfinite(rec).all()
    assert rel_diff(chk, par) < 1e-4
    assert rel_diff(rec, par[:, -6:]) < 1e-4


def test_loss_at_init_is_ln_vocab():
    model = make_model(vocab_size=100, n_layer=2)
    g = torch.Generator().manual_seed(6)
    idx, tgt = torch.randint(0, 100, (4, 32), generator=g), torch.randint(0, 100, (4, 32), generator=g)
    tgt[0, :5] = -1  # ignored positions
    _, loss = model(idx, tgt)
    assert abs(loss.item() - math.log(100)) < 0.1


def test_bf16_autocast_and_bf16_weights():
    """CPU stand-in for CUDA bf16 autocast: both training forms and generate run, finite, close to float32."""
    model = make_model(scale=2.0)
    idx = torch.randint(0, V, (2, 21), generator=torch.Generator().manual_seed(7))
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
    """torchscale's RetNetDecoder with this model's weights (pure key renaming)."""
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
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) == {"retnet_rel_pos.angle", "retnet_rel_pos.decay"}, (missing, unexpected)
    return ref


def test_parity_with_torchscale(monkeypatch):
    RetNetConfig, RetNetDecoder = import_torchscale(monkeypatch)
    idx = torch.randint(0, V, (2, 21), generator=torch.Generator().manual_seed(8))

    # Parallel forms at the usual eps 1e-6: torchscale applies the same normalisations as we do, so they match.
    model = make_model(scale=4.0, norm_eps=1e-6)
    ref = torchscale_copy(model, RetNetConfig, RetNetDecoder)
    with torch.no_grad():
        ours = forward_mode(model, idx, "parallel")
        theirs = ref(idx)[0]
    assert ours.std() > 0.3
    assert rel_diff(ours, theirs) < 1e-5, rel_diff(ours, theirs)

    # torchscale's chunkwise and recurrent forms rescale differently from its parallel form (and from ours); the
    # rescalings cancel only where the group norm is exactly scale-invariant, i.e. eps -> 0. Compare there.
    model = make_model(scale=4.0, norm_eps=1e-20)
    ours = forward_mode(model, idx, "parallel").detach()
    chunked = torchscale_copy(model, RetNetConfig, RetNetDecoder, chunkwise_recurrent=True, recurrent_chunk_size=8)
    recurrent = torchscale_copy(model, RetNetConfig, RetNetDecoder)
    with torch.no_grad():
        theirs_chunk = chunked(idx)[0]  # T = 21 is padded to 24 inside torchscale
        state = {}
        theirs_rec = torch.cat([recurrent(idx[:, :t + 1], incremental_state=state)[0] for t in range(21)], dim=1)
    assert rel_diff(ours, theirs_chunk) < 1e-4, rel_diff(ours, theirs_chunk)
    assert rel_diff(ours, theirs_rec) < 1e-4, rel_diff(ours, theirs_rec)
