# A small GPT-2 on Tiny Shakespeare in GPT-2 BPE tokens (prepare/shakespeare.py, ~300K training tokens).
# With a 50257-token vocabulary the embedding dominates this model; it overfits after a few hundred iterations,
# so the run is short and uses dropout.
model = 'gpt2'
dataset = 'shakespeare'
out_dir = 'out/shakespeare_gpt2'

eval_interval = 100
eval_iters = 20
log_interval = 10

batch_size = 12
block_size = 128
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.2

learning_rate = 1e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 1e-4
warmup_iters = 50
beta2 = 0.99
