# A ~125M-active-parameter mixture of experts on OpenWebText with GPT-2 tokens, on nanoGPT's GPT-2 124M budget.
# On one node of 8 GPUs:
#     torchrun --standalone --nproc_per_node=8 train.py config/moe_125m.py
# gradient_accumulation_steps = 40 is the total over all processes (5 micro-steps per GPU on 8 GPUs), so one
# optimizer step sees 12 * 1024 * 40 = 491,520 tokens on any number of GPUs.
# Llama body (d768, 12 layers, 12 heads, 4 kv heads, tied embeddings) with 8 SwiGLU experts per layer, top-2:
# expert hidden size 1280 gives 128M active parameters per token (341M in all). ffn_hidden = 1024 instead gives
# 114M active, exactly a dense Llama d768/12-layer model with the usual 2048-wide SwiGLU: the equal-compute
# comparison (two half-width experts per token do the work of one dense FFN).
model = 'moe'
dataset = 'openwebtext'
out_dir = 'out/moe_125m'

vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
block_size = 1024
n_layer = 12
n_head = 12
n_kv_head = 4
n_embd = 768
ffn_hidden = 1280
tie_embeddings = True
dropout = 0.0

n_expert = 8
top_k = 2
moe_every = 1
router = 'mixtral'
router_jitter = 0.0
aux_loss_coef = 0.01
z_loss_coef = 0.001
capacity_factor = None  # dropless (Mixtral): no token skips its experts; the experts run as grouped matmuls

batch_size = 12
gradient_accumulation_steps = 40

# nanoGPT's GPT-2 124M recipe: AdamW (0.9, 0.95), weight decay 0.1, clipping 1.0, warmup then cosine to 6e-5.
learning_rate = 6e-4
min_lr = 6e-5
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

dtype = 'bfloat16'  # the experts' grouped matmul runs as one kernel in bfloat16
compile = True
