"""Tests for models/linear_attention.py. No reference implementation of Katharopoulos et al. 2020 installs here, so
the reference is the paper's causal linear attention (section 3.3) written out in this file, one position at a time, in float64: the model's three
forms (quadratic, chunked at several chunk sizes, recurrent) must equal it near float64 rounding, and so must the
whole model's logits, its gradients in either training form, and its incremental generation. Then bf16 autocast,
the state's dtype, long sequences, config errors and the FLOP count."""

import math

import pytest
import torch

from conftest import cached_step_logits, rel_diff, sharpen, tokens
from models import gpt2
from models.linear_attention import (Config, Model, attention_chunked, attention_quadratic, attention_recurrent,
                                     phi)

V = 97
EPS = 1e-6
TIGHT = 1e-12  # float64, relative: the forms agree with the reference to ~2e-16; room for any CPU
f64 = dict(dtype=torch.float64)


def reference(q, k, v, eps=EPS):
    """Eq. 8 as written, position by position: y_i = sum_{j<=i} s_ij v_j / (sum_{j<=i} s_ij + eps) with
    s_ij = phi(q_i) . phi(k_j), phi(x) = elu(x) + 1 (section 3.2.1). q, k, v (B, nh, T, hs) before the feature map."""
    fq = torch.where(q > 0, q + 1, torch.exp(q))  # elu(x) + 1, written out
    fk = torch.where(k > 0, k + 1, torch.exp(k))
    out = torch.empty_like(v)
    for i in range(q.size(2)):
        s = torch.einsum("bhd,bhjd->bhj", fq[:, :, i], fk[:, :, : i + 1])  # (B, nh, i+1)
        out[:, :, i] = torch.einsum("bhj,bhjd->bhd", s, v[:, :, : i + 1]) / (s.sum(-1, keepdim=True) + eps)
    return out


def make_model(scale=4.0, seed=0, dtype=torch.float64, **kw):
    """A tiny model; weight matrices multiplied by scale so that attention, not the residual identity, drives the
    logits (with std 0.02 they are nearly flat and any form would look 'equal')."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=32, chunk_size=8)
    cfg.update(kw)
    model = Model(Config(**cfg)).eval()
    sharpen(model, lambda name, p: scale if p.dim() == 2 and "wpe" not in name else 1.0)
    return model.to(dtype)


def forward_form(model, idx, form):
    for block in model.transformer.h:
        block.attn.form = form
    return model(idx)[0]


def zero_state(B, H, hs):
    return torch.zeros(B, H, hs, hs, **f64), torch.zeros(B, H, hs, **f64)


# ----------------------------------------------------------------------------------------------------------------
# The three forms against the reference


@pytest.mark.parametrize("T", [1, 7, 16, 37, 64])
def test_forms_equal_reference(T):
    """Quadratic, chunked (chunk 1, 3, 8, 16 = T or not, and larger than T) and recurrent, all against the reference; the
    state after the sequence is the same from the chunked and the recurrent form (S and Z of section 3.3)."""
    torch.manual_seed(T)
    B, H, hs = 2, 3, 8
    q, k, v = (torch.randn(B, H, T, hs, **f64) for _ in range(3))
    ref = reference(q, k, v)
    fq, fk = phi(q), phi(k)
    quad = attention_quadratic(fq, fk, v, EPS)
    rec, S, z = attention_recurrent(fq, fk, v, EPS, *zero_state(B, H, hs))
    assert quad.dtype == rec.dtype == S.dtype == torch.float64
    assert rel_diff(quad, ref) < TIGHT, rel_diff(quad, ref)
    assert rel_diff(rec, ref) < TIGHT, rel_diff(rec, ref)
    for chunk in (1, 3, 8, 16, 100):
        chk, S_c, z_c = attention_chunked(fq, fk, v, chunk, EPS)
        assert rel_diff(chk, ref) < TIGHT, (chunk, rel_diff(chk, ref))
        assert rel_diff(S_c, S) < TIGHT and rel_diff(z_c, z) < TIGHT
    # the state equals its definition: S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j)
    assert rel_diff(S, fk.transpose(-2, -1) @ v) < TIGHT and rel_diff(z, fk.sum(2)) < TIGHT


def test_chunked_continues_from_a_state():
    """A sequence split in two: the second part, chunked from the first part's state, equals the reference."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 45, 8, **f64) for _ in range(3))
    ref = reference(q, k, v)
    fq, fk = phi(q), phi(k)
    y1, S, z = attention_chunked(fq[:, :, :17], fk[:, :, :17], v[:, :, :17], 5, EPS)
    y2, _, _ = attention_chunked(fq[:, :, 17:], fk[:, :, 17:], v[:, :, 17:], 5, EPS, S, z)
    assert rel_diff(torch.cat((y1, y2), dim=2), ref) < TIGHT


@pytest.mark.parametrize("T", [1, 8, 21, 64])
def test_model_forms_agree_with_reference(T):
    """Whole-model logits: the model's chunked and quadratic forms and token-by-token recurrent decoding equal a
    forward pass written here with the reference in place of the model's attention."""
    model = make_model()
    idx = tokens(2, T, V, seed=T)

    def ref_forward(idx):
        x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
        for block in model.transformer.h:
            a = block.attn
            q, k, v = a.c_attn(block.ln_1(x)).view(2, T, 3, a.n_head, a.head_dim).permute(2, 0, 3, 1, 4)
            x = x + a.c_proj(reference(q, k, v).transpose(1, 2).reshape(2, T, -1))
            x = x + block.mlp(block.ln_2(x))
        return model.lm_head(model.transformer.ln_f(x))

    with torch.no_grad():
        ref = ref_forward(idx)
        chk, quad = forward_form(model, idx, "chunked"), forward_form(model, idx, "quadratic")
        rec = cached_step_logits(model, idx, 1)  # token by token: the recurrent form only
    assert ref.dtype == torch.float64 and ref.std() > 0.3  # logits are not flat: the comparison means something
    for name, out in (("chunked", chk), ("quadratic", quad), ("recurrent", rec)):
        print(f"T={T} {name}: max rel diff {rel_diff(out, ref):.1e}")
        assert rel_diff(out, ref) < TIGHT, (name, rel_diff(out, ref))


def test_chunked_and_quadratic_gradients_agree():
    """Training with either form: the same loss and gradients (T = 29 is not a multiple of chunk_size 8)."""
    idx, tgt = tokens(2, 29, V, seed=1), tokens(2, 29, V, seed=2)
    grads, losses = [], []
    for form in ("quadratic", "chunked"):
        model = make_model(scale=3.0, form=form).train()
        _, loss = model(idx, tgt)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert abs(losses[0] - losses[1]) < TIGHT * losses[0]
    assert torch.isfinite(grads[0]).all() and grads[0].abs().max() > 0
    assert rel_diff(grads[1], grads[0]) < TIGHT, rel_diff(grads[1], grads[0])


def test_gpt2_checkpoint_loads_by_name():
    """Only attention differs from GPT-2: every GPT-2 weight has a place here, under the same name and shape."""
    cfg = dict(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32)
    sd = gpt2.Model(gpt2.Config(**cfg)).state_dict()
    model = Model(Config(**cfg))
    model.load_state_dict(sd)  # strict
    assert model.num_params() == gpt2.Model(gpt2.Config(**cfg)).num_params()


# ----------------------------------------------------------------------------------------------------------------
# Generation


def test_prompt_chunks_then_tokens_match_full_forward():
    """The generation path: a prompt chunk from position 0, a second multi-token chunk continuing from the state,
    then single recurrent steps, all equal the quadratic forward of the whole sequence."""
    model = make_model()
    idx = tokens(2, 40, V, seed=3)
    with torch.no_grad():
        full = forward_form(model, idx, "quadratic")
        model.setup_cache(2, "cpu", torch.float64)
        parts = [model(idx[:, :19], start_pos=0)[0], model(idx[:, 19:32], start_pos=19)[0]]
        parts += [model(idx[:, t:t + 1], start_pos=t)[0] for t in range(32, 40)]
        model.free_cache()
    assert rel_diff(torch.cat(parts, dim=1), full) < TIGHT


def test_generate_equals_greedy_full_forwards():
    """generate (prompt once, then recurrent steps) == greedy decoding by re-running the quadratic form on the last
    block_size tokens each step, past block_size (16): the state restarts from the last 8 tokens when the positions
    run out, as the README's contract for a bounded model says."""
    model = make_model(scale=6.0, block_size=16)
    prompt = tokens(2, 11, V, seed=4)
    out = model.generate(prompt, max_new_tokens=30, temperature=0)
    assert out.shape == (2, 41) and torch.equal(out[:, :11], prompt)
    seq, n = prompt, prompt.size(1)  # n: the tokens the state summarises, as the contract says
    for _ in range(30):
        logits = forward_form(model, seq[:, -n:], "quadratic")
        seq = torch.cat((seq, logits[:, -1:].argmax(-1)), dim=1)
        n = 8 if n == 16 else n + 1  # positions run out at 16: restart from the last 8 tokens
    assert torch.equal(out, seq)
    assert len(set(out[0, 11:].tolist())) > 3  # not one repeated token
    # the logits the incremental path saw for its first tokens
    with torch.no_grad():
        model.setup_cache(2, "cpu", torch.float64)
        inc = [model(out[:, :11], start_pos=0)[0][:, -1:]]
        inc += [model(out[:, t:t + 1], start_pos=t)[0] for t in range(11, 16)]
        model.free_cache()
        full = forward_form(model, out[:, :16], "quadratic")[:, 10:]
    assert rel_diff(torch.cat(inc, dim=1), full) < TIGHT


def test_generate_frees_state_and_samples():
    model = make_model(dtype=torch.float32)
    out = model.generate(torch.zeros(3, 1, dtype=torch.long), 5, temperature=1.0, top_k=10, top_p=0.9)
    assert out.shape == (3, 6) and out.max() < V
    assert all(b.attn.S is None and b.attn.z is None for b in model.transformer.h)
    with pytest.raises(ValueError, match="empty"):
        model.generate(torch.zeros(3, 0, dtype=torch.long), 5)


# ----------------------------------------------------------------------------------------------------------------
# Dtypes, long sequences, init loss, config errors, FLOPs


def test_bf16_autocast_smoke():
    """CPU stand-in for CUDA bf16 autocast: both training forms run forward and backward, finite and close to
    float32; the state is float32 under autocast and with bf16 weights; generate runs in both."""
    model = make_model(scale=2.0, dtype=torch.float32)
    idx = tokens(2, 21, V, seed=7)
    ref = forward_form(model, idx, "quadratic")
    for form in ("quadratic", "chunked"):
        for block in model.transformer.h:
            block.attn.form = form
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = model(idx, idx)
            loss.backward()
        assert torch.isfinite(logits.float()).all() and torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        assert rel_diff(logits.float(), ref) < 0.1, (form, rel_diff(logits.float(), ref))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.setup_cache(2, "cpu", torch.bfloat16)  # the compute dtype, as generate passes it
        model(idx[:, :12], start_pos=0)
        model(idx[:, 12:13], start_pos=12)
        assert all(b.attn.S.dtype == b.attn.z.dtype == torch.float32 for b in model.transformer.h)
        model.free_cache()
        assert model.generate(idx[:, :5], 4, temperature=0).shape == (2, 9)
    model.to(torch.bfloat16)
    model.setup_cache(2, "cpu", torch.bfloat16)
    assert model.transformer.h[0].attn.S.dtype == torch.float32
    model.free_cache()
    assert model.generate(idx[:, :5], 4, temperature=0).shape == (2, 9)


def test_long_sequence_float32_close_to_float64():
    """T = 1024: the normaliser phi(q)^T Z grows with the position; the chunked form in float32, and recurrent steps
    after a 1018-token prompt, stay within float32 rounding of the float64 model."""
    model = make_model(scale=3.0, n_layer=1, block_size=1024, chunk_size=64, dtype=torch.float32)
    idx = tokens(1, 1024, V, seed=5)

    def run(m):
        with torch.no_grad():
            chk = forward_form(m, idx, "chunked")
            m.setup_cache(1, "cpu", m.lm_head.weight.dtype)
            m(idx[:, :1018], start_pos=0)
            rec = torch.cat([m(idx[:, t:t + 1], start_pos=t)[0] for t in range(1018, 1024)], dim=1)
            m.free_cache()
        return chk, rec

    chk32, rec32 = run(model)
    chk64, rec64 = run(model.double())
    assert rel_diff(chk32.double(), chk64) < 1e-4 and rel_diff(rec32.double(), rec64) < 1e-4
    assert rel_diff(rec64, chk64[:, -6:]) < TIGHT


def test_loss_at_init_is_ln_vocab():
    model = make_model(scale=1.0, vocab_size=100, dtype=torch.float32)
    g = torch.Generator().manual_seed(6)
    idx, tgt = torch.randint(0, 100, (4, 32), generator=g), torch.randint(0, 100, (4, 32), generator=g)
    tgt[0, :5] = -1  # ignored positions
    assert abs(model(idx, tgt)[1].item() - math.log(100)) < 0.1


@pytest.mark.parametrize("kw,word", [(dict(n_embd=30, n_head=4), "n_embd"), (dict(form="rnn"), "form"),
                                     (dict(chunk_size=0), "chunk_size"), (dict(eps=-1.0), "eps")])
def test_bad_config_raises_one_line(kw, word):
    cfg = dict(vocab_size=V, n_layer=1, n_head=2, n_embd=32)
    cfg.update(kw)
    with pytest.raises(ValueError, match=word) as e:
        Model(Config(**cfg))
    assert "\n" not in str(e.value)


def test_flops_and_params():
    d, L, T = 32, 2, 64
    model = make_model(scale=1.0)
    # per block: c_attn 3d^2 + 3d, c_proj d^2 + d, MLP 8d^2 + 5d, two LayerNorms 4d; plus wte (tied), ln_f 2d
    per_block = 12 * d * d + 13 * d
    assert model.num_params() == V * d + L * per_block + 2 * d
    assert model.flops_per_token() == 6 * model.num_params() + 12 * L * d * (8 + d // 2)  # chunk 8, hs 16
    quad = make_model(scale=1.0, form="quadratic")
    assert quad.flops_per_token() == 6 * quad.num_params() + 12 * L * d * T
