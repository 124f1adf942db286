"""
Hugging Face weights in and out. The one place that knows transformers' side: its config.json fields, its file
layouts, its hub. Model files only rename tensors (Model.from_hf_state_dict, model.to_hf()); the rest is here.

    load_model(spec)   a train.py checkpoint (file, or the out_dir holding ckpt.pt), hf:<model id> (from the hub or
                       its local cache), or a directory in transformers' layout (config.json and model.safetensors,
                       a sharded model.safetensors.index.json, or pytorch_model.bin) -> (model, model name, tokenizer)
    export(model)      a directory that transformers' from_pretrained reads (config.json, model.safetensors, and the
                       tokenizer where there is one), and load_model reads back
    init_from_hf       train.py's --init_from=hf:<id> or a transformers directory

FAMILIES picks the model file from config.json's model_type (or its architectures). Each family's config.json is
then read field by field: a field that changes what the network computes is mapped onto the model file's Config,
or the load stops with one line that names it (a RoPE scaling, another norm epsilon, biases, an activation, ...).
Fields that change only training noise or rounding (dropout rates, residual_in_fp32) are taken or ignored.

Weights are read once, straight into the target dtype: the model is built with its parameters on the meta device
(no memory, no init) and takes the file's tensors themselves (load_state_dict(assign=True)), each read from disk
into its own memory and cast on the spot, so a bf16 model never exists as a float32 copy, nor twice.
"""

import contextlib
import dataclasses
import json
import math
import os
import pickle
import shutil
import tempfile

import torch
import torch.nn as nn

from common import die
from common.checkpoints import atomic_write, ensure_writable_dir, load_checkpoint, load_weights, strip_prefixes
from common.data import tokenizer as meta_tokenizer
from common.settings import build_model, load_model_module

META_FILE = "nanoevo_meta.json"  # a train.py checkpoint's dataset meta, beside an export, so it loads back exactly
GPT2_EOT = 50256  # tiktoken's (and HF's) <|endoftext|> in GPT-2's BPE


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers


class Tokenizer:
    """What the scripts need of a tokenizer: encode(str) -> ids, decode(ids) -> str, eot (end-of-text id or None),
    vocab_size, name, and meta (the dataset meta.json it is, for our own tokenizers; None for a transformers one).
    With `missing` (a one-line reason) encode and decode stop with it: a model loads without a tokenizer (scoring
    token files needs none) and says why only when text has to become ids."""

    def __init__(self, name, encode=None, decode=None, eot=None, vocab_size=None, meta=None, missing=None):
        self.name, self.eot, self.vocab_size, self.meta, self.missing = name, eot, vocab_size, meta, missing
        self._encode, self._decode = encode, decode

    def encode(self, text):
        if self.missing:
            die(self.missing)
        return self._encode(text)

    def decode(self, ids):
        if self.missing:
            die(self.missing)
        return self._decode(ids)


def meta_tok(meta):
    """A dataset meta.json's tokenizer (characters or tiktoken's GPT-2 BPE) as a Tokenizer."""
    encode, decode = meta_tokenizer(meta)
    eot = GPT2_EOT if meta["tokenizer"] == "gpt2" else None
    return Tokenizer(meta["tokenizer"], encode, decode, eot, meta["vocab_size"], meta)


def hf_tok(path, model_type, vocab_size, spec):
    """The tokenizer of a transformers directory: our meta if it is our export, tiktoken's GPT-2 for GPT-2 weights
    (the same BPE as HF's GPT2Tokenizer), else transformers' AutoTokenizer from the same directory."""
    if os.path.isfile(os.path.join(path, META_FILE)):
        with open(os.path.join(path, META_FILE)) as f:
            return meta_tok(json.load(f))
    if model_type == "gpt2" and vocab_size >= GPT2_EOT + 1:
        return meta_tok({"tokenizer": "gpt2", "vocab_size": GPT2_EOT + 1})
    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
    if not any(os.path.isfile(os.path.join(path, f)) for f in files):
        return Tokenizer(spec, missing=f"{spec} has no tokenizer ({', '.join(files[:3])} or {META_FILE}) to turn "
                                       f"text into its token ids; copy in the tokenizer it was trained with")
    try:
        from transformers import AutoTokenizer

        with quiet_transformers():
            tk = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # an unreadable or unsupported tokenizer: the weights are still usable
        return Tokenizer(spec, missing=f"could not load the tokenizer in {spec} ({type(e).__name__}: {line(e)})")
    if model_type == "bert" and tk.mask_token_id not in (None, vocab_size - 1):  # (bert-base's is 103)
        die(f"cannot load {spec} into models/bert.py: its tokenizer's [MASK] is token {tk.mask_token_id}, and "
            f"models/bert.py's [MASK] is the last row of the vocabulary ({vocab_size - 1}), as in its own exports")
    # A prompt is continued, not closed: keep a BOS the tokenizer puts first (Llama's <s>), never the tokens it
    # appends (T5's </s>, BERT's [SEP]).
    bos = tk.bos_token_id
    bos = [bos] if bos is not None and tk.encode("a")[:1] == [bos] != tk.encode("a", add_special_tokens=False)[:1] \
        else []
    return Tokenizer(tk.name_or_path or spec, lambda s: bos + tk.encode(s, add_special_tokens=False), tk.decode,
                     tk.eos_token_id, len(tk))


def describe(meta):
    return "characters " + repr("".join(meta.get("chars", ""))[:20]) if meta["tokenizer"] == "char" else "GPT-2 BPE"


def check_data(tok, meta, spec):
    """train.py --init_from: the dataset's token ids must mean what they meant to the checkpoint in training."""
    if tok.missing:
        die(f"{spec} has no tokenizer, so nothing says what its token ids mean; put the meta.json of the data it was "
            f"trained on beside its config.json as {META_FILE}, or train on data made with its tokenizer")
    same = tok.meta is not None and tok.meta["tokenizer"] == meta["tokenizer"] and \
        tok.meta.get("chars") == meta.get("chars")
    if not same:
        theirs = describe(tok.meta) if tok.meta is not None else f"the tokenizer {tok.name}"
        die(f"the dataset is tokenized as {describe(meta)}, but {spec} reads {theirs}; fine-tune on data prepared with "
            f"the model's tokenizer")


# ----------------------------------------------------------------------------------------------------------------
# config.json -> our Config, per family. `need(ok, field, value, why)` stops the load when ok is False.


def rope_theta(c, need, name):
    rope = getattr(c, "rope_parameters", None) or {}
    need(rope.get("rope_type", "default") == "default", "rope_parameters.rope_type", rope.get("rope_type"),
         f"a RoPE scaling models/{name}.py does not have (its RoPE is the default one)")
    need(rope.get("partial_rotary_factor", 1.0) == 1.0, "rope_parameters.partial_rotary_factor",
         rope.get("partial_rotary_factor"), f"and models/{name}.py rotates the whole head")
    return float(rope.get("rope_theta", 10000.0))


def gpt2_config(c, need, block_size):
    need(c.activation_function in ("gelu_new", "gelu_pytorch_tanh"), "activation_function", c.activation_function,
         "and models/gpt2.py has the tanh GELU (gelu_new) only")
    need(c.n_inner in (None, 4 * c.n_embd), "n_inner", c.n_inner, f"and models/gpt2.py's MLP is 4 * n_embd wide")
    need(c.layer_norm_epsilon == 1e-5, "layer_norm_epsilon", c.layer_norm_epsilon, "and models/gpt2.py's is 1e-5")
    for field, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False), ("tie_word_embeddings", True)):
        need(getattr(c, field, want) == want, field, getattr(c, field, want), f"and models/gpt2.py has {want}")
    return dict(block_size=block_size or c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                n_embd=c.n_embd, dropout=c.resid_pdrop, bias=True), c.n_positions


def llama_config(c, need, block_size, name="llama"):
    H, nh = c.hidden_size, c.num_attention_heads
    need(c.hidden_act == "silu", "hidden_act", c.hidden_act, f"and models/{name}.py's SwiGLU gate is SiLU")
    for field in ("attention_bias", "mlp_bias"):
        need(not getattr(c, field, False), field, getattr(c, field, False), f"and models/{name}.py has no biases")
    need(getattr(c, "head_dim", None) in (None, H // nh), "head_dim", getattr(c, "head_dim", None),
         f"and models/{name}.py's heads are hidden_size / num_attention_heads = {H // nh} wide")
    theta = rope_theta(c, need, name)
    return dict(block_size=block_size or c.max_position_embeddings, vocab_size=c.vocab_size,
                n_layer=c.num_hidden_layers, n_head=nh, n_kv_head=c.num_key_value_heads or nh, n_embd=H,
                ffn_hidden=c.intermediate_size, norm_eps=c.rms_norm_eps, rope_theta=theta,
                tie_embeddings=c.tie_word_embeddings, dropout=c.attention_dropout), c.max_position_embeddings


def mistral_config(c, need, block_size):
    kw, positions = llama_config(c, need, block_size)
    return dict(kw, sliding_window=c.sliding_window), positions


def mixtral_config(c, need, block_size):
    kw, positions = llama_config(c, need, block_size, "moe")
    window = c.sliding_window  # a window at least as long as the context never masks anything
    need(window is None or window >= max(kw["block_size"], positions), "sliding_window", window,
         "and models/moe.py has full attention only")
    need(not c.router_jitter_noise, "router_jitter_noise", c.router_jitter_noise,
         "and transformers' jitter scales the experts' input too, models/moe.py's the router's only")
    return dict(kw, n_expert=c.num_local_experts, top_k=c.num_experts_per_tok, moe_every=1, router="mixtral",
                aux_loss_coef=c.router_aux_loss_coef, z_loss_coef=0.0), positions  # Mixtral has no z-loss


def mamba_common(c, need, name):
    need(not c.use_bias, "use_bias", c.use_bias, f"and models/{name}.py's projections have no biases")
    need(c.use_conv_bias, "use_conv_bias", c.use_conv_bias, f"and models/{name}.py's convolution has a bias")
    need(c.hidden_act == "silu", "hidden_act", c.hidden_act, f"and models/{name}.py's activations are SiLU")
    need(c.tie_word_embeddings, "tie_word_embeddings", c.tie_word_embeddings,
         f"and models/{name}.py's output layer is its embedding")
    # residual_in_fp32 changes rounding only (the residual stream of a bf16 model kept in float32): not the network
    return dict(vocab_size=c.vocab_size, n_layer=c.num_hidden_layers, d_model=c.hidden_size, d_state=c.state_size,
                d_conv=c.conv_kernel, expand=c.expand, dt_min=c.time_step_min, dt_max=c.time_step_max,
                dt_init_floor=c.time_step_floor, norm_eps=c.layer_norm_epsilon)


def mamba_config(c, need, block_size):
    D = c.hidden_size
    need(c.intermediate_size == c.expand * D, "intermediate_size", c.intermediate_size,
         f"and models/mamba.py's is expand * hidden_size = {c.expand * D}")
    need(c.time_step_rank == math.ceil(D / 16), "time_step_rank", c.time_step_rank,
         f"and models/mamba.py's is ceil(hidden_size / 16) = {math.ceil(D / 16)}")
    kw = mamba_common(c, need, "mamba")  # no position table: block_size is only a training length
    return dict(kw, **({"block_size": block_size} if block_size else {})), None


def mamba2_config(c, need, block_size):
    need(c.num_heads * c.head_dim == c.expand * c.hidden_size, "num_heads", c.num_heads,
         f"and models/mamba2.py's heads are expand * hidden_size / head_dim = {c.expand * c.hidden_size // c.head_dim}")
    need(getattr(c, "rms_norm", True), "rms_norm", False, "and models/mamba2.py always has its gated RMSNorm")
    need(not getattr(c, "norm_before_gate", False), "norm_before_gate", True,
         "and models/mamba2.py gates before its norm")
    kw = dict(mamba_common(c, need, "mamba2"), head_dim=c.head_dim, n_groups=c.n_groups, chunk_size=c.chunk_size,
              dt_limit=tuple(float(x) for x in c.time_step_limit))
    return dict(kw, **({"block_size": block_size} if block_size else {})), None


def bert_config(c, need, block_size):
    need(c.hidden_act == "gelu", "hidden_act", c.hidden_act, "and models/bert.py's GELU is the exact (erf) one")
    need(c.layer_norm_eps == 1e-12, "layer_norm_eps", c.layer_norm_eps, "and models/bert.py's is 1e-12")
    for field, want in (("position_embedding_type", "absolute"), ("is_decoder", False),
                        ("add_cross_attention", False), ("tie_word_embeddings", True)):
        need(getattr(c, field, want) == want, field, getattr(c, field, want), f"and models/bert.py has {want!r}")
    # Our vocabulary is the text's; [MASK] is the row after it (the last of transformers' table).
    return dict(block_size=block_size or c.max_position_embeddings, vocab_size=c.vocab_size - 1,
                n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_embd=c.hidden_size,
                ffn_hidden=c.intermediate_size, dropout=c.hidden_dropout_prob), c.max_position_embeddings


def t5_config(c, need, block_size):
    need(c.feed_forward_proj in ("gated-gelu", "relu"), "feed_forward_proj", c.feed_forward_proj,
         "and models/t5.py has 'gated-gelu' (v1.1) or 'relu' (v1.0)")
    # transformers 5 always ties lm_head to shared unless the file holds one of its own; scale_decoder_outputs
    # (d_model^-0.5 before it, T5 v1.0) is what our tie_word_embeddings switches together with the tie.
    block_size = block_size or getattr(c, "n_positions", None) or 512  # relative positions: any length reads
    return dict(block_size=block_size, src_len=block_size // 2, vocab_size=c.vocab_size, d_model=c.d_model,
                n_head=c.num_heads, d_kv=c.d_kv, d_ff=c.d_ff, n_encoder_layer=c.num_layers,
                n_decoder_layer=c.num_decoder_layers, num_buckets=c.relative_attention_num_buckets,
                max_distance=c.relative_attention_max_distance, activation=c.feed_forward_proj,
                tie_word_embeddings=c.scale_decoder_outputs, layer_norm_eps=c.layer_norm_epsilon,
                dropout=c.dropout_rate), None


# ----------------------------------------------------------------------------------------------------------------
# transformers' file layouts -> what from_hf_state_dict reads (which is transformers' in-memory layout)


def gpt2_layout(sd, c, spec):
    if not any(k.startswith("transformer.") for k in sd):  # saved from GPT2Model, as the hub's gpt2: no prefix
        sd = {k if k.startswith("lm_head.") else f"transformer.{k}": v for k, v in sd.items()}
    if "transformer.wte.weight" in sd:
        sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])  # tied: the file leaves it out
    return sd


def mixtral_layout(sd, c, spec):
    """The files hold each expert apart (block_sparse_moe.experts.{e}.w1/w2/w3, what transformers still writes);
    transformers 5 and models/moe.py fuse them per layer: gate_up_proj (E, 2I, H) = [w1; w3], down_proj (E, H, I)."""
    for i in range(c.num_hidden_layers):
        old, new = f"model.layers.{i}.block_sparse_moe.", f"model.layers.{i}.mlp."
        if f"{old}gate.weight" in sd:
            sd[f"{new}gate.weight"] = sd.pop(f"{old}gate.weight")
        if f"{old}experts.0.w1.weight" in sd:  # popped as they are stacked, so the originals go one layer at a time
            w = [{n: sd.pop(f"{old}experts.{e}.{n}.weight") for n in ("w1", "w2", "w3")}
                 for e in range(c.num_local_experts)]
            sd[f"{new}experts.gate_up_proj"] = torch.stack([torch.cat([x["w1"], x["w3"]]) for x in w])
            sd[f"{new}experts.down_proj"] = torch.stack([x["w2"] for x in w])
    return sd


def bert_layout(sd, c, spec):  # checkpoints from TensorFlow name LayerNorm's weight and bias gamma and beta
    return {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in sd.items()}


def t5_layout(sd, c, spec):
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    lm_head = sd.get("lm_head.weight")
    if c.scale_decoder_outputs and lm_head is not None and not torch.equal(lm_head, sd["shared.weight"]):
        die(f"cannot load {spec} into models/t5.py: its lm_head differs from its embedding while config.json's "
            f"scale_decoder_outputs is true, and models/t5.py rescales only a tied output layer (v1.0)")
    if "shared.weight" in sd:
        sd.setdefault("lm_head.weight", sd["shared.weight"])  # tied: the file leaves it out
    return sd


def same(sd, c, spec):
    return sd


# config.json's model_type: (our model file, the transformers class it twins, its config map, its file layout).
# Mistral is models/llama.py with a sliding window; Mixtral is models/moe.py with the Mixtral router in every layer.
FAMILIES = {
    "gpt2": ("gpt2", "GPT2LMHeadModel", gpt2_config, gpt2_layout),
    "llama": ("llama", "LlamaForCausalLM", llama_config, same),
    "mistral": ("llama", "MistralForCausalLM", mistral_config, same),
    "mixtral": ("moe", "MixtralForCausalLM", mixtral_config, mixtral_layout),
    "mamba": ("mamba", "MambaForCausalLM", mamba_config, same),
    "mamba2": ("mamba2", "Mamba2ForCausalLM", mamba2_config, same),
    "bert": ("bert", "BertForMaskedLM", bert_config, bert_layout),
    "t5": ("t5", "T5ForConditionalGeneration", t5_config, t5_layout),
}


# ----------------------------------------------------------------------------------------------------------------
# Reading and writing weights


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path, dtype):
    """Every tensor of a .safetensors file, each read into memory of its own and cast to dtype at once (floating
    tensors only): the peak is the model in dtype plus one tensor as stored. (safetensors' safe_open maps the file
    instead; the mapped pages count as ours once read, and a cast from them holds the file and the copy at once.)"""
    out = {}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            raw = torch.empty(end - start, dtype=torch.uint8)
            f.seek(8 + n + start)
            if f.readinto(raw.numpy()) != end - start:
                raise ValueError(f"the file ends inside tensor {name}")
            t = raw.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
            out[name] = t.to(dtype) if t.is_floating_point() else t
    return out


def read_weights(path, dtype):
    """{transformers name: tensor in dtype} from a directory's model.safetensors, its shards, or pytorch_model.bin."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if os.path.isfile(os.path.join(path, single)):
            files = [single]
        elif os.path.isfile(os.path.join(path, index)):
            with open(os.path.join(path, index)) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            continue
        sd = {}
        for name in files:
            file = os.path.join(path, name)
            try:
                if name.endswith(".safetensors"):
                    sd.update(read_safetensors(file, dtype))
                else:  # mmap: each tensor is read from the file as it is cast, never the whole file at once
                    for k, v in torch.load(file, map_location="cpu", weights_only=True, mmap=True).items():
                        sd[k] = v.to(dtype) if v.is_floating_point() else v
            except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
                die(f"{file} is unreadable ({type(e).__name__}: {line(e)}); download or save it again")
        return sd
    die(f"{path} has a config.json but no weights (model.safetensors, a sharded model.safetensors.index.json or "
        f"pytorch_model.bin); save the model with its weights (save_pretrained)")


def write_safetensors(sd, path):
    """A .safetensors file written tensor by tensor (no second copy of the model, as safetensors' save_file makes
    of views): an 8-byte header length, the JSON header, then each tensor's bytes at its offsets."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in sd.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors' own writer does
    with atomic_write(path) as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for t in sd.values():
            f.write(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)


# ----------------------------------------------------------------------------------------------------------------
# Building a model around the file's tensors


@contextlib.contextmanager
def empty_weights(model_cls, adjust):
    """Inside: every parameter goes to the meta device as it is registered (no memory, no init: accelerate's
    init_empty_weights), while buffers (RoPE tables, functions of the config) are computed as usual; and
    model_cls.load_state_dict (which from_hf_state_dict calls) takes the given tensors themselves (assign=True)
    after `adjust(state_dict, model)`, instead of copying them into initialised weights. assign gives every name
    a Parameter of its own: tied weights are tied again, and attributes set on parameters (Mamba's
    _no_weight_decay) carried over."""
    register = nn.Module.register_parameter
    own = vars(model_cls).get("load_state_dict")
    loading = []  # non-empty while loading: the tensors assigned then are the real ones

    def register_on_meta(module, name, param):
        if param is not None and not param.is_meta and not loading:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    def load_assigned(model, state_dict, strict=True, assign=False):
        groups = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), (p, []))[1].append(name)
        loading.append(True)
        try:
            result = nn.Module.load_state_dict(model, adjust(state_dict, model), strict=strict, assign=True)
            for old, names in groups.values():
                new = model.get_parameter(names[0])
                vars(new).update(vars(old))
                for name in names[1:]:
                    module, _, attr = name.rpartition(".")
                    setattr(model.get_submodule(module), attr, new)
        finally:
            loading.pop()
        return result

    nn.Module.register_parameter, model_cls.load_state_dict = register_on_meta, load_assigned
    try:
        yield
    finally:
        nn.Module.register_parameter = register
        if own is None:
            del model_cls.load_state_dict
        else:
            model_cls.load_state_dict = own


def own_storage(model):
    """Every parameter in contiguous memory of its own. from_hf_state_dict hands over transposed views (GPT-2's
    Conv1D), slices (a cropped position table, BERT's segment row), halves of one tensor (Mixtral's fused experts)
    and one tensor under two untied names (T5's lm_head from a tied file); kept so, they would pin whole originals
    or share memory between parameters. Called once the file's dict is gone, each copy replaces its original."""
    storages = set()
    for p in model.parameters():  # each tied Parameter once
        s = p.untyped_storage()
        if not p.is_contiguous() or s.nbytes() != p.numel() * p.element_size() or s.data_ptr() in storages:
            p.data = p.detach().clone(memory_format=torch.contiguous_format)
        storages.add(p.untyped_storage().data_ptr())


def crop(sd, model, old, new, where):
    """nanoGPT's crop_block_size for any model file: a learned position table (old rows where the model, built with
    block_size new, has new) keeps its first new rows. RoPE, relative biases and scans have no such table."""
    if not old or new == old:
        return sd
    out = dict(sd)
    for k, v in model.state_dict().items():
        t = sd.get(k)
        if t is not None and t.shape[1:] == v.shape[1:] and (t.shape[0], v.shape[0]) == (old, new):
            if new > old:
                die(f"block_size={new} is longer than the {old} positions of {where}'s learned position table ({k}); "
                    f"use block_size <= {old}")
            out[k] = t[:new]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Loading


def line(e):
    """An exception's message on one line, shortened."""
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def quiet_transformers():
    """transformers logs its own notes on stderr (a config it finds unusual, weights it ties); what matters here
    ends in one line of ours."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def is_hf(spec):
    """hf:<model id>, or a directory in transformers' layout (a config.json and no train.py ckpt.pt)."""
    return bool(spec) and isinstance(spec, str) and (spec.startswith("hf:") or (
        os.path.isfile(os.path.join(spec, "config.json")) and not os.path.isfile(os.path.join(spec, "ckpt.pt"))))


def download(model_id):
    """hf:<model id> -> the local snapshot directory (transformers' cache; offline, a copy already there)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        die(f"hf:{model_id} needs huggingface_hub: pip install transformers")
    # config, tokenizer and safetensors weights; pytorch_model.bin only where there are none (a repository often
    # holds the same weights in several formats, Mistral's also as consolidated.safetensors)
    wanted = ["*.json", "*.txt", "*.model", "model*.safetensors"]
    try:
        path = snapshot_download(model_id, allow_patterns=wanted)
        if not any(f.endswith(".safetensors") for f in os.listdir(path)):
            path = snapshot_download(model_id, allow_patterns=wanted + ["pytorch_model*.bin"])
    except GatedRepoError:
        die(f"hf:{model_id} is gated: accept its license on huggingface.co and log in (hf auth login)")
    except RepositoryNotFoundError:
        die(f"hf:{model_id}: no such model on the Hugging Face hub (a private one needs hf auth login); check the id")
    except LocalEntryNotFoundError as e:
        die(f"could not reach the Hugging Face hub for hf:{model_id} and it is not in the local cache "
            f"({type(e).__name__}); "
            f"pass a local directory instead (config.json and model.safetensors, as save_pretrained writes)")
    except Exception as e:  # network and HTTP errors
        die(f"could not download hf:{model_id} ({type(e).__name__}: {line(e)}); pass a local directory instead")
    return path


def load_hf(path, spec, dtype, block_size):
    cfg_file = os.path.join(path, "config.json")
    try:
        with open(cfg_file) as f:
            raw = json.load(f)
        model_type = raw.get("model_type") or next(
            (t for t, f in FAMILIES.items() if f[1] in (raw.get("architectures") or [])), None)
    except (OSError, ValueError, AttributeError) as e:
        die(f"{cfg_file} is unreadable ({line(e)}); save the model again")
    if model_type not in FAMILIES:
        known = ", ".join(f"{t} (models/{f[0]}.py)" for t, f in FAMILIES.items())
        die(f"{spec}: model_type {model_type!r} has no model file here; known: {known}")
    name, _, config_map, layout = FAMILIES[model_type]
    module = load_model_module(name)
    try:
        import transformers

        with quiet_transformers():  # transformers' config class: the defaults config.json leaves out, old names
            c = transformers.CONFIG_MAPPING[model_type].from_pretrained(path)
    except ImportError:
        die("loading Hugging Face weights needs transformers: pip install transformers")
    except Exception as e:
        die(f"{cfg_file} does not describe a valid {model_type} model ({type(e).__name__}: {line(e)})")

    def need(ok, field, value, why):
        if not ok:
            die(f"cannot load {spec} into models/{name}.py: config.json has {field}={value!r}, {why}")

    kwargs, positions = config_map(c, need, block_size)
    tok = hf_tok(path, model_type, c.vocab_size, spec)
    model = from_hf(module, kwargs, layout(read_weights(path, dtype), c, spec), positions, spec, name)
    return model, name, tok


def from_hf(module, kwargs, sd, positions, spec, name):
    """Our model holding the tensors of sd (transformers' names) themselves, their memory its own."""
    try:
        config = module.Config(**kwargs)
        with empty_weights(module.Model, lambda d, m: crop(d, m, positions, config.block_size, spec)):
            model = module.Model.from_hf_state_dict(sd, config)
    except ValueError as e:  # the Config's own checks (head sizes, ...)
        die(f"invalid model config for models/{name}.py from {spec}/config.json: {e}")
    except (KeyError, RuntimeError) as e:  # a tensor missing, left over or of another shape
        what = f"no tensor {e}" if isinstance(e, KeyError) else line(e)
        die(f"the weights in {spec} do not fit models/{name}.py as its config.json describes it: {what}")
    del sd  # the only other references to the file's tensors: now each copy below frees its original
    own_storage(model)
    empty = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        die(f"models/{name}.py's from_hf_state_dict left {', '.join(empty[:3])} unset; it must load every tensor")
    return model


def load_ours(spec, dtype, block_size):
    ckpt = load_checkpoint(spec)
    name, cfg = ckpt["model_name"], dict(ckpt["model_config"])
    module = load_model_module(name)
    if block_size:
        cfg["block_size"] = block_size
    model = build_model(module, cfg)
    if block_size:
        ckpt["model"] = crop(strip_prefixes(ckpt["model"]), model, ckpt["model_config"].get("block_size"),
                             block_size, spec)
    load_weights(model, ckpt, spec, name)
    tok = meta_tok(ckpt["meta"]) if "meta" in ckpt else \
        Tokenizer(name, missing=f"{spec} has no tokenizer meta; it was not written by train.py")
    return model.to(dtype) if dtype else model, name, tok


def load_model(spec, device="cpu", dtype=None, block_size=None):
    """(model in eval mode on device, model file name, Tokenizer) from a train.py checkpoint (a file or the out_dir
    holding ckpt.pt), hf:<model id>, or a transformers directory. dtype None keeps float32 weights (what train.py
    trains and sample.py runs under autocast); a dtype (torch.bfloat16, ...) loads the weights straight into it.
    block_size crops the context below the checkpoint's (a learned position table keeps its first rows)."""
    if not spec or not isinstance(spec, str):
        die("no checkpoint given: pass a train.py out_dir or checkpoint, hf:<model id>, or a transformers directory")
    if not spec.startswith("hf:") and not os.path.exists(spec):
        die(f"checkpoint {spec} not found; train one first (python train.py CONFIG), check the path, or pass "
            f"hf:<model id> or a directory holding a transformers model (config.json, model.safetensors)")
    if is_hf(spec):
        path = download(spec[3:]) if spec.startswith("hf:") else spec
        model, name, tok = load_hf(path, spec, dtype or torch.float32, block_size)
    else:
        model, name, tok = load_ours(spec, dtype, block_size)
    return model.to(device).eval(), name, tok


def init_from_hf(spec, model_kwargs, meta):
    """train.py --init_from=hf:<id> or a transformers directory. The checkpoint decides the model file and its
    config; of the model settings given, block_size (cropping) and dropout apply, any other must agree with it.
    The dataset must be tokenized as the model was. -> (model, model name, model module, its Config as kwargs)."""
    model, name, tok = load_model(spec, block_size=model_kwargs.get("block_size"))
    check_data(tok, meta, spec)
    cfg = dataclasses.asdict(model.config)
    clash = [f"{k}={v!r} (the checkpoint's: {cfg.get(k, 'none')!r})" for k, v in model_kwargs.items()
             if k not in ("block_size", "dropout") and cfg.get(k) != v or k not in cfg]
    if clash:
        die(f"--init_from={spec} brings its own model config (models/{name}.py); leave out {', '.join(clash)}")
    if "dropout" in model_kwargs:  # a training setting, as in a new run: every nn.Dropout of the model
        model.config.dropout = model_kwargs["dropout"]
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = model_kwargs["dropout"]
    return model.train(), name, load_model_module(name), dataclasses.asdict(model.config)


# ----------------------------------------------------------------------------------------------------------------
# Export


def gpt2_tokenizer_files(out_dir, block_size):
    """HF's GPT2Tokenizer reads the same two files tiktoken's gpt2 encoding is built from (encoder.json as
    vocab.json, vocab.bpe as merges.txt); tiktoken caches them under hashed names, so they are found by content."""
    import tiktoken

    tiktoken.get_encoding("gpt2")  # downloads and caches them if they are not there yet
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or \
        os.path.join(tempfile.gettempdir(), "data-gym-cache")
    found = {}
    for f in sorted(os.listdir(cache)) if os.path.isdir(cache) else []:
        with open(os.path.join(cache, f), "rb") as fh:
            head = fh.read(16)
        name = "vocab.json" if head.startswith(b'{"!": 0') else "merges.txt" if head.startswith(b"#version") else None
        if name:
            found[name] = os.path.join(cache, f)
    if len(found) < 2:
        print(f"note: tiktoken's GPT-2 files are not in {cache}, so {out_dir} has no tokenizer for transformers "
              f"({META_FILE} still tells this repo's scripts)")
        return
    for name, src in found.items():
        shutil.copyfile(src, os.path.join(out_dir, name))
    eot = "<|endoftext|>"
    with atomic_write(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "bos_token": eot, "eos_token": eot, "unk_token": eot,
                   "add_prefix_space": False, "model_max_length": block_size}, f, indent=2)


def to_files(sd):
    """transformers' in-memory layout -> the one its files hold: each tensor once (tied ones under their first
    name, which from_pretrained ties again), Mixtral's experts apart (what save_pretrained writes, and every
    Mixtral reader takes)."""
    out, seen = {}, set()
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if key in seen:
            continue
        seen.add(key)
        layer, fused, what = k.partition(".mlp.experts.")
        if not fused:
            out[k.replace(".mlp.gate.", ".block_sparse_moe.gate.") if k.endswith(".mlp.gate.weight") else k] = v
            continue
        for e, w in enumerate(v):
            halves = dict(zip(("w1", "w3"), w.chunk(2))) if what == "gate_up_proj" else {"w2": w}
            out.update({f"{layer}.block_sparse_moe.experts.{e}.{n}.weight": t for n, t in halves.items()})
    return out


def export(model, model_name, out_dir, meta=None):
    """Write model as a transformers directory: config.json (the config class named by to_hf()), model.safetensors,
    and the tokenizer: the dataset meta as nanoevo_meta.json (what load_model reads back), and for GPT-2 BPE the
    files of HF's GPT2Tokenizer. A Config transformers cannot express (to_hf raises ValueError) is one line.
    -> the transformers class that reads it."""
    if not hasattr(model, "to_hf"):
        die(f"models/{model_name}.py has no to_hf(): there is no transformers model to export it as")
    try:
        cfg_cls, kwargs, model_cls, sd = model.to_hf()
    except ValueError as e:
        die(f"cannot export models/{model_name}.py to transformers: {e}")
    try:
        import transformers
    except ImportError:
        die("exporting to transformers needs it installed: pip install transformers")
    with quiet_transformers():
        config = getattr(transformers, cfg_cls)(**kwargs)
    config.architectures = [model_cls]
    config.dtype = next(v.dtype for v in sd.values() if v.is_floating_point())
    sd = to_files(sd)
    ensure_writable_dir(out_dir)
    config.save_pretrained(out_dir)
    write_safetensors(sd, os.path.join(out_dir, "model.safetensors"))
    if meta is not None:
        with atomic_write(os.path.join(out_dir, META_FILE), "w") as f:
            json.dump(meta, f)
        if meta["tokenizer"] == "gpt2":
            gpt2_tokenizer_files(out_dir, model.config.block_size)
    return model_cls
