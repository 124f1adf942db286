# Llama at GPT-2 small's shape (12 layers x 768, 12 query heads) on OpenWebText with GPT-2 tokens, nanoGPT's
# GPT-2 124M budget, so it compares with that baseline. On one node of 8 GPUs:
#     torchrun --standalone --nproc_per_node=8 train.py config/llama_125m.py
# and on one GPU the same command without torchrun (same optimizer step, 8x longer).
# gradient_accumulation_steps = 5 * 8 = 40 is the total over all processes: train.py divides it by the number of
# processes (5 micro-steps per GPU on 8 GPUs, 40 on one), so one optimizer step always sees
# 12 * 1024 * 40 = 491,520 tokens (~0.5M, GPT-3's batch for this size).
# Data: python prepare/openwebtext.py first (train.py says so if data/openwebtext is missing).
model = 'llama'
dataset = 'openwebtext'
out_dir = 'out/llama_125m'

n_layer = 12
n_head = 12
n_embd = 768
# Grouped-query attention: 4 key/value heads, each shared by 3 query heads. The KV cache is 12 KiB per token in
# bf16 instead of 36 KiB for multi-head (MQA, n_kv_head = 1: 3 KiB), at a small quality cost (GQA paper).
n_kv_head = 4
# SwiGLU hidden size 3 * 768 instead of the 8/3 rule's 2048: it spends the parameters GQA saves in wk/wv, so with
# tied embeddings the model has 121.2M parameters, close to GPT-2 small's 124M (no position table here).
ffn_hidden = 2304
tie_embeddings = True  # the 50304 x 768 table is 38.6M parameters, a third of the model at this size
vocab_size = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
block_size = 1024
rope_theta = 10000.0
dropout = 0.0

batch_size = 12
gradient_accumulation_steps = 5 * 8

# GPT-3 small's recipe, as nanoGPT uses it for GPT-2 124M: AdamW betas (0.9, 0.95), weight decay 0.1, gradient
# clipping 1.0, 6e-4 peak, linear warmup then cosine decay to a tenth. 600k steps ~ 300B tokens.
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 2000
max_iters = 600000
lr_decay_iters = 600000
schedule = 'cosine'
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 200
log_interval = 10

dtype = 'bfloat16'
compile = True
