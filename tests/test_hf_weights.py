"""Hugging Face weights in and out (common/hf.py): every model file with a transformers twin loads a tiny random
transformers model saved with save_pretrained (config.json + model.safetensors, as the hub holds them) and computes
its logits; exports back to a directory transformers' from_pretrained reads, with the same logits; and the files
round-trip tensor for tensor. Then the user paths: sample.py and train.py --init_from on such directories, block_size
cropping, loading straight into bf16, and every bad input as one line.

Parity runs in float64 with bounds near float64 rounding (relative to the logit scale). Where transformers rounds
to float32 inside a float64 model (Mamba's and Mamba-2's .float() calls and norms, T5LayerNorm, Mixtral's router
softmax), the reference runs with those casts removed (the same patches as tests/test_mamba.py, test_mamba2.py and
test_t5.py use); our side runs unpatched. Offline: nothing here reaches the hub (HF_HUB_OFFLINE in the subprocesses)."""

import contextlib
import json
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file

from common.hf import GPT2_EOT, META_FILE, export, load_model
from conftest import TINY, corpus_text, rel_diff, run, scale_up, tokens, write_char_dataset

V = 61  # the text's vocabulary in the tiny models (BERT's transformers twin has one row more: [MASK])
TIGHT = 1e-12  # float64, relative to the largest logit


@contextlib.contextmanager
def t5_norm_exact():
    """transformers' T5LayerNorm takes the mean square in float32 whatever the input dtype (tests/test_t5.py)."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(T5LayerNorm, "forward", forward)
        yield


@contextlib.contextmanager
def mixtral_router_exact():
    """transformers' MixtralTopKRouter takes its softmax in float32 (tests/test_moe.py): the same in the input's."""
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    def forward(self, h):
        logits = torch.nn.functional.linear(h.reshape(-1, self.hidden_dim), self.weight)
        top, idx = torch.topk(logits.softmax(dim=-1), self.top_k, dim=-1)
        return logits, top / top.sum(dim=-1, keepdim=True), idx
    with pytest.MonkeyPatch.context() as m:
        m.setattr(MixtralTopKRouter, "forward", forward)
        yield


def mamba_exact():
    from test_mamba import hf_in_float64
    return hf_in_float64()


def mamba2_exact():
    from test_mamba2 import hf_in_float64
    return hf_in_float64()


LLAMA = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
# name: (config class, model class, Auto class, config kwargs, weight std, the reference's float64 context,
#        its from_pretrained overrides for float64)
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", "AutoModelForCausalLM",
             dict(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4), 0.2, None, {}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", "AutoModelForCausalLM", LLAMA, 0.2, None, {}),
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", "AutoModelForCausalLM",
                   dict(LLAMA, tie_word_embeddings=True, num_key_value_heads=1), 0.2, None, {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", "AutoModelForCausalLM", dict(LLAMA, sliding_window=5), 0.2,
                None, {}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", "AutoModelForCausalLM",
                dict(LLAMA, num_local_experts=4, num_experts_per_tok=2, intermediate_size=16), 0.2,
                mixtral_router_exact, dict(experts_implementation="eager")),
    "mamba": ("MambaConfig", "MambaForCausalLM", "AutoModelForCausalLM",
              dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=8, conv_kernel=4, expand=2), 0.3,
              mamba_exact, dict(residual_in_fp32=False)),
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM", "AutoModelForCausalLM",
               dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, state_size=8, head_dim=16, num_heads=4,
                    n_groups=2, expand=2, chunk_size=16, tie_word_embeddings=True), 0.3,
               mamba2_exact, dict(residual_in_fp32=False)),
    "bert": ("BertConfig", "BertForMaskedLM", "AutoModelForMaskedLM",
             dict(vocab_size=V + 1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=32, type_vocab_size=1, pad_token_id=None), 0.2, None, {}),
    "t5-v1.1": ("T5Config", "T5ForConditionalGeneration", "AutoModelForSeq2SeqLM",
                dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=12,
                     feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0), 0.3,
                t5_norm_exact, {}),
    "t5-v1.0": ("T5Config", "T5ForConditionalGeneration", "AutoModelForSeq2SeqLM",
                dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=1, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=12, feed_forward_proj="relu",
                     decoder_start_token_id=0), 0.3, t5_norm_exact, {}),
}
OUR_FILE = {"gpt2": "gpt2", "llama": "llama", "llama-tied": "llama", "mistral": "llama", "mixtral": "moe",
            "mamba": "mamba", "mamba2": "mamba2", "bert": "bert", "t5-v1.1": "t5", "t5-v1.0": "t5"}


def save_tiny(family, path, dtype=torch.float64, seed=0, **overrides):
    """A random transformers model of the family (weights far from flat logits) in dtype, saved to path."""
    cfg_cls, model_cls, _, kw, std, _, exact = FAMILIES[family]
    cfg = getattr(transformers, cfg_cls)(**{**kw, "bos_token_id": None, "eos_token_id": None, **exact, **overrides})
    torch.manual_seed(seed)
    hf = getattr(transformers, model_cls)(cfg)
    if family == "t5-v1.1":  # v1.1 unties the output layer; transformers 5 ties it unless the weights differ
        hf.lm_head.weight = torch.nn.Parameter(hf.shared.weight.detach().clone())
    big = ("A_log", ".D", "dt_bias", "dt_proj.bias", "relative_attention_bias.weight")  # these must move outputs
    scale_up(hf, lambda name: 1.0 if name.endswith(big) else std, seed).to(dtype)
    hf.save_pretrained(path)
    return hf


def reference(family, path, dtype=torch.float64):
    """transformers' own from_pretrained of a directory (ours exported, or theirs saved), as the float64 reference."""
    _, _, auto, _, _, _, overrides = FAMILIES[family]
    return getattr(transformers, auto).from_pretrained(path, dtype=dtype, **overrides).eval()


def logits_pair(family, ours, hf, idx):
    """(ours, theirs) logits on idx: BERT's twin predicts [MASK] too, T5's takes the source and decoder inputs."""
    exact = FAMILIES[family][5] or contextlib.nullcontext
    with torch.no_grad():
        mine = ours(idx)[0]
        kwargs = ours.hf_inputs(idx, None)[0] if hasattr(ours, "hf_inputs") else dict(input_ids=idx)
        with exact():
            theirs = hf(**kwargs).logits
    return mine, theirs[..., :mine.size(-1)]


# ----------------------------------------------------------------------------------------------------------------
# Every family: transformers -> ours -> transformers


@pytest.mark.parametrize("family", list(FAMILIES))
def test_weights_in_and_out_float64(family, tmp_path):
    hf = save_tiny(family, tmp_path / "hf")
    model, name, tok = load_model(str(tmp_path / "hf"), dtype=torch.float64, block_size=24 if "t5" in family else None)
    assert name == OUR_FILE[family] and not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    idx = tokens(2, 24, V)
    ours, theirs = logits_pair(family, model, hf, idx)
    assert ours.dtype == theirs.dtype == torch.float64
    diff = rel_diff(ours, theirs)
    print(f"{family}: ours vs transformers, float64 logits max rel diff {diff:.1e}")
    assert diff < TIGHT
    print(f"{family}: logit spread {(theirs.std(-1).mean() / theirs.abs().max()).item():.2f}")
    assert theirs.std(-1).mean() > 0.1 * theirs.abs().max()  # far from flat: a mis-mapped tensor would show

    export(model, name, str(tmp_path / "out"))
    back = reference(family, tmp_path / "out")
    again, ref = logits_pair(family, model, back, idx)
    diff = rel_diff(again, ref)
    print(f"{family}: ours vs transformers' from_pretrained of our export, max rel diff {diff:.1e}")
    assert diff < TIGHT

    theirs_files = load_file(tmp_path / "hf" / "model.safetensors")
    ours_files = load_file(tmp_path / "out" / "model.safetensors")
    if family == "bert":  # [MASK] is input-only in models/bert.py: its output bias is written as -inf
        assert ours_files["cls.predictions.bias"][-1] == -float("inf")
        ours_files["cls.predictions.bias"][-1] = theirs_files["cls.predictions.bias"][-1]
    assert sorted(ours_files) == sorted(theirs_files)
    assert all(torch.equal(ours_files[k], theirs_files[k]) for k in theirs_files)


def copy_config(src, dst):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())


def test_other_file_layouts_load_the_same(tmp_path):
    """Shards with an index, pytorch_model.bin, GPT-2 as the hub holds it (no 'transformer.' prefix, the causal-mask
    buffers, no lm_head), Mixtral with fused experts (transformers 5's in-memory names)."""
    from safetensors.torch import save_file

    hf = save_tiny("llama", tmp_path / "llama")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    copy_config(tmp_path / "llama", tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    gpt2 = save_tiny("gpt2", tmp_path / "gpt2")
    copy_config(tmp_path / "gpt2", tmp_path / "gpt2-hub")
    sd = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "gpt2" / "model.safetensors").items()}
    sd.update({f"h.{i}.attn.bias": torch.ones(1, 1, 32, 32).tril() for i in range(2)})
    save_file(sd, tmp_path / "gpt2-hub" / "model.safetensors", metadata={"format": "pt"})
    mixtral = save_tiny("mixtral", tmp_path / "mixtral")
    copy_config(tmp_path / "mixtral", tmp_path / "mixtral-fused")
    save_file({k: v.contiguous() for k, v in mixtral.state_dict().items()},
              tmp_path / "mixtral-fused" / "model.safetensors", metadata={"format": "pt"})
    idx = tokens(2, 24, V)
    for d, ref in (("sharded", hf), ("bin", hf), ("gpt2-hub", gpt2), ("mixtral-fused", mixtral)):
        model = load_model(str(tmp_path / d), dtype=torch.float64)[0]
        ours, theirs = logits_pair("mixtral" if "mixtral" in d else "llama", model, ref, idx)
        assert rel_diff(ours, theirs) < TIGHT, d


# ----------------------------------------------------------------------------------------------------------------
# What a loaded model is: its dtype, its memory, its ties, its block_size


def test_bf16_load_casts_each_tensor_and_keeps_ties_and_attributes(tmp_path):
    hf = save_tiny("llama-tied", tmp_path / "llama", dtype=torch.float32)
    model = load_model(str(tmp_path / "llama"), dtype=torch.bfloat16)[0]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.output.weight is model.tok_embeddings.weight  # tied again after assign
    theirs = hf.state_dict()
    assert torch.equal(model.layers[1].attention.wk.weight, theirs["model.layers.1.self_attn.k_proj.weight"].bfloat16())
    with torch.no_grad():
        assert model(tokens(1, 8, V))[0].dtype == torch.bfloat16

    save_tiny("mamba", tmp_path / "mamba", dtype=torch.float32)
    mamba = load_model(str(tmp_path / "mamba"), dtype=torch.bfloat16)[0]
    assert mamba.lm_head.weight is mamba.backbone.embeddings.weight
    assert all(getattr(m.mixer.A_log, "_no_weight_decay", False) and m.mixer.D._no_weight_decay
               for m in mamba.backbone.layers)  # the optimizer's no-decay rule reads these


@pytest.mark.parametrize("family", ["gpt2", "mixtral", "t5-v1.1", "bert"])
def test_every_parameter_owns_contiguous_memory(family, tmp_path):
    """Transposed (GPT-2's Conv1D), halved (Mixtral's fused experts), shared (T5's lm_head) or sliced (BERT's
    segment row) tensors from the file become parameters of their own: nothing pins or shares another's memory."""
    save_tiny(family, tmp_path / "hf")
    model = load_model(str(tmp_path / "hf"), block_size=24 if "t5" in family else None)[0]
    params = list(model.parameters())
    storages = {p.untyped_storage().data_ptr() for p in params}
    assert len(storages) == len(params) and all(p.is_contiguous() and p.requires_grad for p in params)
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in params)


def test_block_size_crops_a_learned_position_table(tmp_path, capsys):
    hf = save_tiny("gpt2", tmp_path / "hf")  # n_positions 32
    model = load_model(str(tmp_path / "hf"), dtype=torch.float64, block_size=16)[0]
    assert model.config.block_size == 16 and model.transformer.wpe.weight.shape == (16, 32)
    assert torch.equal(model.transformer.wpe.weight, hf.transformer.wpe.weight[:16])
    idx = tokens(2, 16, V)
    with torch.no_grad():  # causal: the first 16 positions do not see the table's rest
        assert rel_diff(model(idx)[0], hf(idx).logits) < TIGHT
    capsys.readouterr()  # (save_pretrained's progress bar)
    with pytest.raises(SystemExit):
        load_model(str(tmp_path / "hf"), block_size=48)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "block_size=48 is longer than the 32 positions" in err


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers


def test_tokenizer_from_the_directory_keeps_a_leading_bos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    save_tiny("llama", tmp_path / "hf")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(tmp_path / "hf")
    tok = load_model(str(tmp_path / "hf"))[2]
    assert tok.encode("hello world") == [1, 3, 4]  # the BOS it puts first, not the EOS it appends
    assert tok.decode([3, 4]) == "hello world" and tok.eot == 2 and tok.vocab_size == 5


def test_export_writes_gpt2_tokenizer_files_transformers_reads(tmp_path):
    import tiktoken

    from models.gpt2 import Config, Model

    model = Model(Config(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    export(model, "gpt2", str(tmp_path / "out"), meta={"vocab_size": 50257, "tokenizer": "gpt2"})
    text = "Hello world, it's 2024!\n  Ünïcode too."
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert theirs.encode(text) == tiktoken.get_encoding("gpt2").encode(text)
    assert json.loads((tmp_path / "out" / META_FILE).read_text())["tokenizer"] == "gpt2"
    assert load_model(str(tmp_path / "out"))[2].eot == GPT2_EOT


# ----------------------------------------------------------------------------------------------------------------
# The user paths: sample.py, export.py, train.py --init_from


OFFLINE = {"HF_HUB_OFFLINE": "1"}


def one_line_error(p):
    """A user mistake: exit code 1 and one line on stderr, no traceback."""
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def test_sample_from_a_saved_gpt2_directory_matches_transformers_greedy(tmp_path):
    """GPT-2 weights read tiktoken's GPT-2 tokens; sample.py's greedy text is transformers' greedy text."""
    import tiktoken

    hf = save_tiny("gpt2", tmp_path / "gpt2", dtype=torch.float32, vocab_size=GPT2_EOT + 1, n_embd=16, n_layer=1,
                   n_positions=64)
    enc = tiktoken.get_encoding("gpt2")
    prompt = enc.encode("The king said")
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0,
                      output_scores=True, return_dict_in_generate=True)
    top2 = torch.stack(out.scores, 1).topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-3  # clear winners: float32 summation order cannot flip them
    p = run("sample.py", f"--ckpt={tmp_path / 'gpt2'}", "--start=The king said", "--num_samples=1",
            "--max_new_tokens=8", "--temperature=0", "--device=cpu", cwd=tmp_path, env=OFFLINE)
    assert p.stdout == enc.decode(out.sequences[0].tolist()) + "\n"


def test_export_sample_and_fine_tune_from_a_trained_checkpoint(workdir):
    run("train.py", *TINY, "--out_dir=out", cwd=workdir)
    p = run("export.py", "--ckpt=out", "--out_dir=exported", cwd=workdir)
    assert "transformers' GPT2LMHeadModel" in p.stdout
    assert (workdir / "exported" / META_FILE).is_file()  # the character vocabulary travels with the weights
    p = run("sample.py", "--ckpt=exported", "--start=the ", "--num_samples=1", "--max_new_tokens=20",
            "--temperature=0", "--device=cpu", cwd=workdir, env=OFFLINE)
    q = run("sample.py", "--ckpt=out", "--start=the ", "--num_samples=1", "--max_new_tokens=20", "--temperature=0",
            "--device=cpu", cwd=workdir)
    assert p.stdout == q.stdout and p.stdout.startswith("the ")  # the export generates what the checkpoint does

    # fine-tuning from the export starts where the checkpoint ended: the same val loss on the same eval batches
    first = run("train.py", *TINY, "--out_dir=ft", "--init_from=exported", "--max_iters=10", cwd=workdir).stdout
    ended = [line for line in open(workdir / "out" / "log.jsonl")][-1]
    assert f"step 0: train loss {json.loads(ended)['train_loss']:.4f}, val loss {json.loads(ended)['val_loss']:.4f}" \
        in first
    ckpt = torch.load(workdir / "ft" / "ckpt.pt", weights_only=True)
    assert ckpt["model_name"] == "gpt2" and ckpt["iter_num"] == 10

    # below the checkpoint's block_size the learned position table is cropped
    run("train.py", *TINY, "--out_dir=crop", "--init_from=exported", "--block_size=16", "--max_iters=2",
        "--eval_interval=2", cwd=workdir)
    ckpt = torch.load(workdir / "crop" / "ckpt.pt", weights_only=True)
    assert ckpt["model_config"]["block_size"] == 16 and ckpt["model"]["transformer.wpe.weight"].shape == (16, 32)
    ours = load_model(str(workdir / "out"), block_size=16)[0]  # a train.py checkpoint crops the same way
    assert ours.transformer.wpe.weight.shape == (16, 32)

    # another vocabulary, another model config: one line each
    write_char_dataset(workdir / "data" / "other", "".join(reversed(corpus_text(20_000))) + "#@")
    p = run("train.py", *TINY, "--dataset=other", "--out_dir=bad", "--init_from=exported", cwd=workdir, check=False)
    assert "the dataset is tokenized as characters" in one_line_error(p)
    p = run("train.py", *TINY, "--out_dir=bad", "--init_from=exported", "--n_layer=3", cwd=workdir, check=False)
    assert "leave out n_layer=3 (the checkpoint's: 2)" in one_line_error(p)


def test_fine_tune_gpt2_weights_with_the_shipped_config_on_gpt2_tokens_only(workdir):
    """config/finetune_shakespeare.py with a local GPT-2 directory standing in for hf:gpt2 (offline): it trains on
    GPT-2 BPE data and refuses character data."""
    import numpy as np
    import tiktoken

    save_tiny("gpt2", workdir / "gpt2", dtype=torch.float32, vocab_size=GPT2_EOT + 1, n_embd=16, n_layer=1)
    ids = np.array(tiktoken.get_encoding("gpt2").encode(corpus_text(20_000)), dtype=np.uint16)
    os.makedirs(workdir / "data" / "bpe")
    ids[:-500].tofile(workdir / "data" / "bpe" / "train.bin")
    ids[-500:].tofile(workdir / "data" / "bpe" / "val.bin")
    (workdir / "data" / "bpe" / "meta.json").write_text(json.dumps({"vocab_size": GPT2_EOT + 1, "tokenizer": "gpt2"}))
    args = [os.path.join(os.path.dirname(__file__), "..", "config", "finetune_shakespeare.py"), "--init_from=gpt2",
            "--block_size=16", "--gradient_accumulation_steps=2", "--max_iters=2", "--eval_interval=2",
            "--eval_iters=2", "--device=cpu"]
    p = run("train.py", *args, "--dataset=bpe", "--out_dir=ft", cwd=workdir, env=OFFLINE)
    assert "models/gpt2.py" in p.stdout and "step 2:" in p.stdout
    p = run("sample.py", "--ckpt=ft", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=5", "--device=cpu",
            cwd=workdir)
    assert p.stdout.startswith("ROMEO:")
    p = run("train.py", *args, "--dataset=tiny", "--out_dir=bad", cwd=workdir, check=False, env=OFFLINE)
    assert "the dataset is tokenized as characters" in one_line_error(p) and "GPT-2 BPE" in p.stderr
    save_tiny("llama", workdir / "llama", dtype=torch.float32)  # no tokenizer at all: nothing to check against
    p = run("train.py", *TINY[1:], "--out_dir=bad", "--init_from=llama", cwd=workdir, check=False, env=OFFLINE)
    assert "llama has no tokenizer" in one_line_error(p)


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs: one line each


@pytest.mark.parametrize("family,field,value", [
    ("gpt2", "activation_function", "relu"), ("gpt2", "layer_norm_epsilon", 1e-6), ("gpt2", "n_inner", 48),
    ("llama", "rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    ("llama", "attention_bias", True), ("llama", "mlp_bias", True), ("llama", "hidden_act", "gelu"),
    ("llama", "head_dim", 16), ("mixtral", "router_jitter_noise", 0.1), ("mixtral", "sliding_window", 8),
    ("mamba", "use_bias", True), ("mamba", "time_step_rank", 3), ("mamba2", "tie_word_embeddings", False),
    ("bert", "layer_norm_eps", 1e-5), ("bert", "hidden_act", "gelu_new"),
    ("t5-v1.1", "feed_forward_proj", "gated-silu")])
def test_a_field_that_changes_the_math_is_refused(family, field, value, tmp_path, capsys):
    cfg_cls, _, _, kw, _, _, _ = FAMILIES[family]
    getattr(transformers, cfg_cls)(**{**kw, field: value}).save_pretrained(tmp_path)  # refused before any weights
    capsys.readouterr()
    with pytest.raises(SystemExit):
        load_model(str(tmp_path))
    err = capsys.readouterr().err
    shown = "rope_type='linear'" if field == "rope_parameters" else f"{field}={value!r}"
    assert err.count("\n") == 1 and err.startswith("error: cannot load") and shown in err, err


def test_bad_inputs_are_one_line(tmp_path, capsys):
    p = run("sample.py", "--ckpt=nothere", cwd=tmp_path, check=False)
    assert "checkpoint nothere not found" in one_line_error(p) and "hf:<model id>" in p.stderr
    p = run("sample.py", "--ckpt=hf:gpt2", cwd=tmp_path, check=False, env={**OFFLINE, "HF_HOME": str(tmp_path)})
    assert "could not reach the Hugging Face hub for hf:gpt2" in one_line_error(p)
    assert "LocalEntryNotFoundError" in p.stderr and "pass a local directory instead" in p.stderr
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    p = run("sample.py", "--ckpt=qwen", cwd=tmp_path, check=False)
    assert "model_type 'qwen2' has no model file here; known: gpt2 (models/gpt2.py)" in one_line_error(p)

    def refused(call, words):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            call()
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err

    transformers.GPT2Config(**FAMILIES["gpt2"][3]).save_pretrained(tmp_path / "noweights")
    refused(lambda: load_model(str(tmp_path / "noweights")), "has a config.json but no weights")
    (tmp_path / "noweights" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    # weights of another shape than config.json says: a tiny GPT-2 whose config claims a wider model
    save_tiny("gpt2", tmp_path / "wider", dtype=torch.float32)
    cfg = json.loads((tmp_path / "wider" / "config.json").read_text())
    (tmp_path / "wider" / "config.json").write_text(json.dumps({**cfg, "n_embd": 2 * cfg["n_embd"]}))
    refused(lambda: load_model(str(tmp_path / "wider")), "do not fit models/gpt2.py as its config.json describes it")
    refused(lambda: load_model(str(tmp_path / "noweights")), "model.safetensors is unreadable")
    from models.gpt2 import Config, Model
    from models.retnet import Config as RConfig, Model as RModel

    small = dict(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=8)
    refused(lambda: export(Model(Config(**small, bias=False)), "gpt2", str(tmp_path / "x")), "always has biases")
    retnet = RModel(RConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8))
    refused(lambda: export(retnet, "retnet", str(tmp_path / "x")), "no to_hf()")
