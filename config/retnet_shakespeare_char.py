# RetNet on character-level Shakespeare: the same budget as the GPT-2 quickstart (config/shakespeare_char.py),
# so the two runs compare directly. At block 64 the parallel retention form is the cheapest; 'chunkwise' trains the
# same function (tests/test_retnet.py checks it) and pays off at long block sizes.
model = 'retnet'
dataset = 'shakespeare_char'
out_dir = 'out/retnet_shakespeare_char'

batch_size = 12
block_size = 64
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4  # head dim 32; decays gamma = 1 - 2^-5 .. 1 - 2^-8
n_embd = 128
dropout = 0.0
retention_mode = 'parallel'
chunk_size = 64

learning_rate = 1e-3  # small model, small batch: nanoGPT's char-level rate
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
warmup_iters = 100
beta2 = 0.99  # few tokens per step

eval_interval = 250
eval_iters = 20
log_interval = 10
