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
model = 'mamba2'
n_layer = 6  # a Mamba-2 block holds ~6 d^2 + 2 d N parameters (in_proj's B and C): about half a Transformer block
d_model = 128
d_state = 128  # N, the reference's (Mamba-1: 16)
head_dim = 64  # P, the reference's: E = 256 channels in 4 heads, one B/C group
# 807,368 non-embedding parameters (815,688 with the tied 65 x 128 embedding, the count train.py prints).
# Tuned by a sweep of 30-second runs (one thread each, min_lr = lr / 10), final val loss (steps reached; the shared
# CPU's load varied between runs): 2e-3: 1.973 (151), 4e-3: 1.866 (190), 8e-3: 1.844 (217). The three run at once,
# so under equal load (48 steps each): 2.515, 2.338, 2.260.
learning_rate = 8e-3
min_lr = 0.0008
