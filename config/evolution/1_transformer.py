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
model = 'transformer'
src_len = 32
d_model = 128
n_head = 4
d_ff = 384  # 3 * d_model: 2 + 2 layers then hold 786K parameters, as the others
n_encoder_layer = 2
n_decoder_layer = 2
dropout = 0.0  # no dropout anywhere in the study (the paper's 0.1 is in config/transformer_shakespeare_char.py)
label_smoothing = 0.0  # plain cross-entropy like the others (the paper's 0.1 is in config/transformer_shakespeare_char.py)
# Tuned by a sweep of 60-second runs (one thread each, min_lr = lr / 10), final val loss:
# 1e-3: 1.998, 2e-3: 1.941, 4e-3: 1.988, 8e-3: 3.343
learning_rate = 2e-3
min_lr = 0.0002
