# The quickstart: a baby GPT-2 on Tiny Shakespeare characters.
# On a 2-core CPU (no compile, float32) it trains in a few minutes; this is nanoGPT's CPU recipe
# (4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations) with a higher learning rate.
# On a GPU, nanoGPT's GPU recipe (6 layers, 384 wide, context 256, batch 64, dropout 0.2, 5000 iterations)
# reaches val ~1.47:  python train.py config/shakespeare_char.py config/shakespeare_char_gpu.py
model = 'gpt2'
dataset = 'shakespeare_char'
out_dir = 'out/shakespeare_char'

eval_interval = 250
eval_iters = 20
log_interval = 50

batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

# nanoGPT's 1e-3 ends at val 1.917 here; a sweep on this CPU (2000 iterations each) gave 2e-3: 1.812,
# 3e-3: 1.780, 4e-3: 1.769, 6e-3: 1.783. 3e-3 sits inside the flat optimum, away from its unstable edge.
learning_rate = 3e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 3e-4  # learning_rate / 10, as Chinchilla
warmup_iters = 100
beta2 = 0.99  # larger than the usual 0.95: few tokens per step
