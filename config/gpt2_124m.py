# GPT-2 124M on OpenWebText, nanoGPT's reproduction recipe: 8 GPUs, ~5 days on 8 A100 40GB for 600K iterations,
# reaching val loss ~2.85. Prepare the data first (python prepare/openwebtext.py), then:
#   torchrun --standalone --nproc_per_node=8 train.py config/gpt2_124m.py
# On one GPU the same global batch is reached by gradient accumulation: python train.py config/gpt2_124m.py
model = 'gpt2'
dataset = 'openwebtext'
out_dir = 'out/gpt2_124m'

# 12 sequences * 1024 tokens * 40 micro-steps = 491,520 tokens per optimizer step (~0.5M, as GPT-3 small).
# gradient_accumulation_steps is global: with 8 processes each runs 5 micro-steps.
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

n_layer = 12
n_head = 12
n_embd = 768
vocab_size = 50304  # 50257 padded to a multiple of 64
dropout = 0.0
bias = True

learning_rate = 6e-4
min_lr = 6e-5
max_iters = 600000
lr_decay_iters = 600000
warmup_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 200
log_interval = 10

dtype = 'bfloat16'
compile = True
