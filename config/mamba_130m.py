# Mamba-130M (the shape of state-spaces/mamba-130m: 24 layers x 768, d_state 16, expand 2, 129M parameters) on
# OpenWebText with GPT-2 tokens, nanoGPT's GPT-2 124M budget. On one node of 8 GPUs:
#     torchrun --standalone --nproc_per_node=8 train.py config/mamba_130m.py
# gradient_accumulation_steps = 40 is the total over all processes (5 micro-steps per GPU on 8 GPUs), so one
# optimizer step sees 12 * 1024 * 40 = 491,520 tokens (~0.5M, the paper's batch for this size) on any number of
# GPUs. 600k steps ~ 300B tokens, what mamba-130m saw of the Pile.
model = 'mamba'
dataset = 'openwebtext'
out_dir = 'out/mamba_130m'

n_layer = 24
d_model = 768
d_state = 16
d_conv = 4
expand = 2
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64 (mamba-130m pads its 50277 to 50280)
block_size = 1024
# Keep only the scan's inputs and recompute its (batch, 1024, 1536, 16) float32 states in backward (paper 3.3.2):
# storing them would take ~1.2 GB per layer per stored copy at batch 12, ~100 GB for 24 layers.
recompute_scan = True

batch_size = 12
gradient_accumulation_steps = 40

# The Mamba paper's language-model recipe (appendix E.2): AdamW betas (0.9, 0.95), weight decay 0.1, gradient
# clipping 1.0, warmup then cosine decay to 1e-5, and a peak learning rate above GPT-3's 6e-4 for this size.
learning_rate = 1.5e-3
min_lr = 1e-5
warmup_iters = 2000
max_iters = 600000
lr_decay_iters = 600000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 200
log_interval = 10

dtype = 'bfloat16'
compile = True
