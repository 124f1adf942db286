"""bench.py smoke tests: tiny configs, a couple of steps; the output parses. Timings are never asserted."""

import json
import re

from conftest import run

TINY_BENCH = ["--model=gpt2", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--vocab_size=64",
              "--batch_size=2", "--train_steps=2", "--warmup_steps=1", "--contexts=8,16", "--decode_tokens=4",
              "--scaling_lengths=16,32", "--device=cpu"]


def test_all_modes_with_hf_twin(tmp_path):
    p = run("bench.py", *TINY_BENCH, "--vs_hf=True", "--results=res.jsonl", cwd=tmp_path)
    rec = json.loads((tmp_path / "res.jsonl").read_text().splitlines()[-1])
    assert rec["model"] == "gpt2" and rec["torch"] and rec["date"] and rec["device"] == "cpu"
    assert {(r["impl"], r["dtype"]) for r in rec["train"]} == {(i, d) for i in ("ours", "hf")
                                                               for d in ("float32", "bfloat16")}
    assert all(r["tok_s"] > 0 and r["ms"] > 0 and 0 < r["mfu"] for r in rec["train"])
    assert sorted({r["context"] for r in rec["infer"]}) == [8, 16]
    assert all(r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 for r in rec["infer"])
    assert sorted({r["T"] for r in rec["scaling"]}) == [16, 32]
    ratios = re.findall(r"train float32 T=32: ([\d.]+)x tokens/s", p.stdout)
    assert len(ratios) == 1 and float(ratios[0]) > 0
    assert "decode float32 context 16:" in p.stdout


ENCODER_DECODER = ["--n_head=2", "--d_model=32", "--src_len=8", "--n_encoder_layer=1", "--n_decoder_layer=1"]
SIZES = {  # every file in models/ (the test below fails for one left out)
    "bert": ["--n_layer=2", "--n_head=2", "--n_embd=32"],
    "gpt2": ["--n_layer=2", "--n_head=2", "--n_embd=32"],
    "lab": ["--n_layer=2", "--n_head=2", "--n_embd=32", "--position=t5", "--mod_capacity=0.5"],
    "linear_attention": ["--n_layer=2", "--n_head=2", "--n_embd=32", "--chunk_size=8"],
    "llama": ["--n_layer=2", "--n_head=2", "--n_kv_head=1", "--n_embd=32", "--ffn_hidden=88"],
    "mamba": ["--n_layer=2", "--d_model=32"],
    "mamba2": ["--n_layer=2", "--d_model=32", "--d_state=16", "--head_dim=16", "--chunk_size=8"],
    "moe": ["--n_layer=2", "--n_head=2", "--n_kv_head=1", "--n_embd=32", "--ffn_hidden=88", "--n_expert=4"],
    "retnet": ["--n_layer=2", "--n_head=2", "--n_embd=32"],
    "t5": ENCODER_DECODER + ["--d_kv=16", "--d_ff=64"],
    "transformer": ENCODER_DECODER,
}


def test_every_model_file_runs_in_bench(tmp_path):
    from test_contract import MODELS

    assert sorted(SIZES) == MODELS, "add the new model file's sizes to SIZES"
    for model, extra in SIZES.items():
        args = [a for a in TINY_BENCH if not a.startswith(("--model", "--n_head", "--n_embd", "--n_layer"))]
        p = run("bench.py", *args, f"--model={model}", *extra, "--dtypes=float32", "--results=res.jsonl", cwd=tmp_path)
        assert "Training (forward" in p.stdout, model
    assert len((tmp_path / "res.jsonl").read_text().splitlines()) == len(SIZES)


def test_hf_twin_of_the_encoder_models(tmp_path):
    """--vs_hf for the models whose twin takes other inputs (hf_inputs): BERT trains (BertForMaskedLM cannot
    generate, so its decode rows are ours only), T5 trains and decodes."""
    args = [a for a in TINY_BENCH if not a.startswith(("--model", "--n_head", "--n_embd", "--n_layer"))]
    for model in ("bert", "t5"):
        p = run("bench.py", *args, f"--model={model}", *SIZES[model], "--dtypes=float32", "--vs_hf=True",
                "--results=res.jsonl", cwd=tmp_path)
        rec = json.loads((tmp_path / "res.jsonl").read_text().splitlines()[-1])
        assert {r["impl"] for r in rec["train"]} == {"ours", "hf"} and all(r["tok_s"] > 0 for r in rec["train"])
        assert {r["impl"] for r in rec["infer"]} == ({"ours"} if model == "bert" else {"ours", "hf"}), model
        assert re.search(r"train float32 T=32: [\d.]+x tokens/s", p.stdout), model


def test_bench_bad_input_one_line(tmp_path):
    p = run("bench.py", *TINY_BENCH, "--modes=train,fly", cwd=tmp_path, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "choose from train, infer, scaling" in p.stderr
    p = run("bench.py", *TINY_BENCH, "--trainstep=3", cwd=tmp_path, check=False)
    assert p.returncode != 0 and "did you mean 'train_steps'" in p.stderr
    p = run("bench.py", "--model=retnet", "--vs_hf=True", cwd=tmp_path, check=False)
    assert p.returncode != 0 and "models/retnet.py has no to_hf()" in p.stderr and "Traceback" not in p.stderr


def test_bench_keys_dashes_and_training_settings(tmp_path):
    (tmp_path / "cfg.py").write_text("model = 'gpt2'\nlearning_rate = 3e-3\nmax_iters = 5\n")
    p = run("bench.py", "cfg.py", *TINY_BENCH, "--modes=train", "--dtypes=float32", "--vs-hf=True",
            "--results=res.jsonl", cwd=tmp_path)
    assert "does not use these settings of the config: learning_rate, max_iters" in p.stdout
    assert "train float32 T=32:" in p.stdout  # --vs-hf was read as --vs_hf
    p = run("bench.py", *TINY_BENCH, "--learning_rate=1e-3", cwd=tmp_path, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip() == "error: --learning_rate is a train.py setting that bench.py does not use; leave it out"
