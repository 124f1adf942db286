# A small BERT (models/bert.py) on Tiny Shakespeare characters, at the GPT-2 quickstart's size and budget
# (config/shakespeare_char.py: 4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations).
#     python train.py config/bert_shakespeare_char.py
#     python sample.py --ckpt=out/bert_shakespeare_char --start="To be, or [MASK][MASK][MASK] to be" --temperature=0
# The objective is the masked LM: 15% of each block's positions are chosen (80% [MASK], 10% a random character,
# 10% unchanged) and predicted from both sides, a new mask each step; val loss uses one fixed mask. Its loss is
# the cross-entropy on those positions only: not comparable with the causal models' next-character loss (context
# on both sides makes a masked character easier to guess), and each step trains on ~15% of the positions.
model = 'bert'
dataset = 'shakespeare_char'
out_dir = 'out/bert_shakespeare_char'

eval_interval = 250
eval_iters = 20
log_interval = 50

batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128  # ffn_hidden defaults to 4 * n_embd, BERT's ratio
dropout = 0.0  # BERT's 0.1 is for 3.3B words; 2000 steps on 1 MB do not overfit this model

# BERT's recipe is Adam with warmup and linear decay at a peak of 1e-4 (RoBERTa: 6e-4 at base size); this tiny
# model takes a larger step. Not tuned by a sweep; post-LN wants the warmup.
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4  # learning_rate / 10
warmup_iters = 100
beta2 = 0.99  # as the quickstart: few tokens per step
weight_decay = 0.01  # BERT's
