# nanoGPT's GPU Shakespeare recipe, applied on top of config/shakespeare_char.py:
#   python train.py config/shakespeare_char.py config/shakespeare_char_gpu.py
# (val loss ~1.47 after 5000 iterations on one GPU, a few minutes on an A100/H100)
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
warmup_iters = 100
eval_interval = 250
eval_iters = 200
log_interval = 10
