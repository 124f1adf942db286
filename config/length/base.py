# The length study (README "How far each position scheme reaches"): "train short, test long" (Press et al. 2022).
# models/lab.py with LLaMA's choices (RMSNorm, no biases, SwiGLU), one position scheme per row, trained at
# block_size 64 on Tiny Shakespeare characters and evaluated at 64, 128, 256, 512 and 1024. The recipe is the
# ablation ladder's (config/ladder/base.py); each row's learning rate comes from the same sweep (x0.5, x1, x2).
#   python bench.py --length config/length            # 6 rows x 3 seeds x 2000 steps (~30 min on 2 CPU cores)
#   python bench.py --length config/length --quick    # a smoke run of the same pipeline
model = 'lab'
dataset = 'shakespeare_char'
batch_size = 12
block_size = 64  # the training length: every evaluation length is a multiple of it
n_layer = 4
n_head = 4  # head size 16
n_embd = 64
dropout = 0.0
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
warmup_iters = 50
beta2 = 0.99
weight_decay = 0.1
learning_rate = 3e-3  # the centre of each row's sweep
min_lr = 3e-4
eval_interval = 250
eval_iters = 20
log_interval = 250
