# The evolution study (README "Results"), Tiny Shakespeare characters: every generation at ~0.8M non-embedding
# parameters (active parameters for the MoE), the same batches, one recipe (AdamW, warmup, cosine decay to lr / 10,
# no dropout), each at the best rate of its own sweep, scored on the same predicted positions (eval_from).
# This file is the corpus and the recipe every row shares; each other file in this folder is one generation.
#   python bench.py --evolution config/evolution            # 10 rows, 3 seeds, 2 protocols (wall time: README)
#   python bench.py --evolution config/evolution --quick    # the same pipeline in a few minutes
dataset = 'shakespeare_char'
batch_size = 12
block_size = 64
warmup_iters = 50
beta2 = 0.99
weight_decay = 0.1
eval_interval = 125
eval_iters = 40  # 40 batches x 12 x 33 scored positions: ~16K characters per evaluation
eval_from = 31  # the encoder-decoders predict targets[31:] of a 64-token block (src_len 32): score every model there
log_interval = 125
clock = 'process'  # the time budget counts this process's CPU seconds: other jobs do not shrink it
# Equal tokens: 500 steps of 768 tokens (384K characters, a third of an epoch); equal time: 30 CPU seconds.
# The sweep: the row's learning_rate x 0.5, 1, 2, each the first seed's equal-tokens run.
_budget = dict(tokens_iters=500, seconds=30.0, seeds=3, lr_mults=(0.5, 1.0, 2.0))
