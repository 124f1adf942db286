# A LLaMA-style 1B (Llama 3.2 1B's shape: 16 layers x 2048, 32 query heads, 8 key/value heads, SwiGLU 8192, tied
# embeddings) on OpenWebText with GPT-2 tokens, sharded with FSDP. On one node of 8 GPUs:
#     torchrun --standalone --nproc_per_node=8 train.py config/llama_1b.py
# (fsdp = True below: without torchrun that is a one-line error). On 2 nodes of 8, one command per node, with
# out_dir on a filesystem both nodes see (gradient_accumulation_steps is global, so the batch stays the same):
#     torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --rdzv_endpoint=HOST0:29500 train.py config/llama_1b.py
# and the same with --node_rank=1 on the other node (HOST0: the address of node 0).
# Memory: weights, gradients and AdamW state are 16 bytes per parameter, 16.0 GiB in all; FSDP puts 2.0 GiB of that
# on each of 8 GPUs, DDP all of it (and its gradient buckets) on every GPU. Activations come on top (README, "DDP or
# FSDP"). --fsdp=False runs it with DDP where that fits.
# Data: python prepare/openwebtext.py first (train.py says so if data/openwebtext is missing).
model = 'llama'
dataset = 'openwebtext'
out_dir = 'out/llama_1b'
fsdp = True

n_layer = 16
n_head = 32
n_kv_head = 8  # GQA: each key/value head serves 4 query heads
n_embd = 2048
ffn_hidden = 8192  # 4 x n_embd, as Llama 3.2 1B (the 8/3 rule would give 5632)
tie_embeddings = True  # as Llama 3.2 1B: the 50304 x 2048 table is 103M parameters, 10% of the model
# 1,076,168,704 parameters (models/llama.py with this config): 16 blocks of 60,821,504 plus the table and final norm.
# With Llama 3's own 128256-token vocabulary it would be 1.24B, as Llama 3.2 1B; GPT-2's tokens keep the data
# pipeline of the 125M configs.
vocab_size = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
block_size = 2048
rope_theta = 500000.0  # Llama 3's base
dropout = 0.0

# 8 sequences x 2048 tokens x 64 micro-steps = 1,048,576 tokens per optimizer step (~1M). gradient_accumulation_steps
# is global: 8 per GPU on 8 GPUs, 4 on 16.
batch_size = 8
gradient_accumulation_steps = 8 * 8

# ~20 tokens per parameter (Chinchilla, Hoffmann et al. 2022): 20,000 steps x 1.05M = 21B tokens, about 2.3 passes
# over OpenWebText's 9B (repeating data up to ~4 epochs costs little: Muennighoff et al. 2023). Llama 2's recipe:
# AdamW (0.9, 0.95), weight decay 0.1, clipping 1.0, warmup 2000, cosine to a tenth, peak 3e-4 (its 7B and 13B's;
# untuned here, and smaller models usually take a higher one).
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 2000
max_iters = 20000
lr_decay_iters = 20000
schedule = 'cosine'
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 100
log_interval = 10

dtype = 'bfloat16'
compile = True
