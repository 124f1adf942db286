# The ablation ladder (README "What each idea buys"): models/lab.py from GPT-2's choices to LLaMA's, one idea at a
# time, on Tiny Shakespeare characters. This file is the recipe every row shares; each other file in this folder is
# one row: its options (written out in full, not as a difference) and `_parent`, the row it changes one thing of.
#   python bench.py --ladder config/ladder             # every row, 3 seeds, both protocols (~40 min on 2 CPU cores)
#   python bench.py --ladder config/ladder --quick     # a smoke run of the same pipeline (a few minutes)
model = 'lab'
dataset = 'shakespeare_char'
batch_size = 12
block_size = 64
n_layer = 4
n_head = 4  # head size 16
n_embd = 64
dropout = 0.0
warmup_iters = 50
beta2 = 0.99
weight_decay = 0.1
learning_rate = 3e-3  # the centre of each row's sweep (the study tries x0.5, x1, x2 and keeps the best)
min_lr = 3e-4
eval_interval = 250
eval_iters = 20
log_interval = 250
