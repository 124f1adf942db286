# The evolution study (README "Results"): every generation on Tiny Shakespeare characters, ~0.8M non-embedding
# parameters (active parameters for the MoE), the same batches, one recipe (AdamW, warmup, cosine decay over the
# time budget, no dropout), its own tuned learning rate, and scored on the same predicted positions (eval_from).
#   python bench.py --compare config/evolution/*.py --max_seconds=120
dataset = 'shakespeare_char'
batch_size = 12
block_size = 64
max_iters = 1_000_000  # the budget is max_seconds (given on the command line)
max_seconds = 120.0
warmup_iters = 100
beta2 = 0.99
weight_decay = 0.1
eval_interval = 100
eval_iters = 20
eval_from = 31  # the 2017 Transformer predicts targets[31:] of a 64-token block (src_len 32): score all models there
log_interval = 100
model = 'llama'
n_layer = 4
n_head = 4
n_kv_head = 4  # full multi-head, so the parameter count matches GPT-2's
n_embd = 128
ffn_hidden = 344  # int(8/3 * 128) rounded up to a multiple of 8: 3 * 128 * 344 ~ GPT-2's 8 * 128^2
tie_embeddings = True
# Tuned by a sweep of 60-second runs (one thread each, min_lr = lr / 10), final val loss:
# 5e-4: 1.812, 1e-3: 1.762, 2e-3: 1.767, 4e-3: 1.787, 8e-3: 1.881
learning_rate = 1e-3
min_lr = 0.0001
