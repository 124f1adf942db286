# Mixture of experts on Tiny Shakespeare characters, on the GPT-2 quickstart's budget (config/shakespeare_char.py:
# 4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations):
#     python train.py config/moe_shakespeare_char.py
# The sizes are config/llama_shakespeare_char.py's, with each SwiGLU feed-forward (hidden 344) replaced by 8 experts
# of the same size, top-2 routing as Mixtral: 4.5M parameters, 1.3M active per token (the dense Llama: 0.8M).
# The same sizes also make sparse upcycling work unchanged (every expert starts as a copy of the dense FFN):
#     python train.py config/llama_shakespeare_char.py
#     python train.py config/moe_shakespeare_char.py --init_from=out/llama_shakespeare_char/ckpt.pt \
#         --out_dir=out/moe_upcycled
model = 'moe'
dataset = 'shakespeare_char'
out_dir = 'out/moe_shakespeare_char'

eval_interval = 250
eval_iters = 20
log_interval = 50

batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
n_kv_head = 4
ffn_hidden = 344  # as config/llama_shakespeare_char.py
tie_embeddings = False
dropout = 0.0

n_expert = 8
top_k = 2  # Mixtral / GLaM; top_k = 1 with router = 'switch' is the Switch Transformer
moe_every = 1
router = 'mixtral'
router_jitter = 0.0
aux_loss_coef = 0.01  # Switch's alpha
z_loss_coef = 0.001  # ST-MoE
capacity_factor = None  # dropless; 1.25 gives Switch-style token dropping in training

# The Llama recipe of config/llama_shakespeare_char.py.
learning_rate = 2e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 2e-4
warmup_iters = 100
beta2 = 0.99  # larger than the usual 0.95: few tokens per step
