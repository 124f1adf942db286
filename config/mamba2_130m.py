# Mamba-2-130M (the shape of state-spaces/mamba2-130m: 24 layers x 768, expand 2, 24 heads of 64, d_state 128,
# one B/C group, chunks of 256; 129.0M parameters with its 50288-token vocabulary, 129.0M with ours) on OpenWebText
# with GPT-2 tokens, nanoGPT's GPT-2 124M budget. On one node of 8 GPUs:
#     torchrun --standalone --nproc_per_node=8 train.py config/mamba2_130m.py
# gradient_accumulation_steps = 40 is the total over all processes (5 micro-steps per GPU on 8 GPUs), so one
# optimizer step sees 12 * 1024 * 40 = 491,520 tokens (~0.5M, the papers' batch for this size) on any number of
# GPUs. The recipe is config/mamba_130m.py's, so the two generations compare at equal budget.
model = 'mamba2'
dataset = 'openwebtext'
out_dir = 'out/mamba2_130m'

n_layer = 24
d_model = 768
d_state = 128
d_conv = 4
expand = 2
head_dim = 64
n_groups = 1
chunk_size = 256
vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64 (mamba2-130m pads its 50277 to 50288, a multiple of 16)
block_size = 1024
# The SSD keeps per layer and chunk a (heads, 256, 256) decay mask and its products for backward: ~1 GB per layer
# in float32 at batch 12, ~25 GB over 24 layers. Recomputing them in backward trades that for one more SSD forward.
recompute_ssd = True

batch_size = 12
gradient_accumulation_steps = 40

# The Mamba papers' language-model recipe: AdamW betas (0.9, 0.95), weight decay 0.1, gradient clipping 1.0,
# warmup then cosine decay to 1e-5, and a peak learning rate above GPT-3's 6e-4 for this size.
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
