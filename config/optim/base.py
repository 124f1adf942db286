# The optimizer study (README "What each optimizer buys"): LLaMA at the evolution study's size on Tiny Shakespeare
# characters, one row per optimizer or schedule, each against AdamW with cosine decay. This file is the recipe every
# row shares; each other file in this folder is one row (its options, `_parent`, and `_claim`: the published claim
# the row tests).
#   python bench.py --ladder config/optim --extend=2  # every row: lr sweep, 3 seeds, equal steps and equal time
#   python bench.py --ladder config/optim --quick     # a smoke run of the same pipeline
model = 'llama'
dataset = 'shakespeare_char'
batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_kv_head = 4
n_embd = 128
ffn_hidden = 344
tie_embeddings = True
dropout = 0.0
warmup_iters = 100
beta2 = 0.99
weight_decay = 0.1
learning_rate = 1e-3  # the centre of each row's sweep unless the row sets its own (x1/3, x1, x3; the best is kept)
eval_interval = 100  # dense, so that "steps to AdamW's final loss" can be read off each curve
eval_iters = 20
log_interval = 100
clock = 'process'  # the equal-time runs get equal CPU seconds, whatever else the machine runs (one thread per run)
_budget = dict(tokens_iters=1200, seconds=60.0, sweep_iters=400, seeds=3, lr_mults=(1 / 3, 1.0, 3.0))
