# Llama tuned for wall-clock time: it reaches the GPT-2 quickstart's final val loss (config/shakespeare_char.py:
# 1.781 after ~61 s of training on a 2-core CPU) in about a third of that time, and its whole run takes under half,
# on the same data and the same batches:
#     python train.py config/llama_shakespeare_char_fast.py
# The quickstart's 0.8M-parameter, 4 x 128 model is larger than the ~1.5M training tokens of a one-minute CPU run can
# use. At this budget a smaller model that takes more, cheaper steps wins: 2 layers x 64 wide (0.11M parameters,
# ~9 ms per step instead of ~30). The recipe (learning rate, warmup, ten-fold cosine decay, betas) is the quickstart's.
# Sweep at a fixed budget of half the quickstart's time (final val loss): 4x128 1.850-1.916 (lr 2e-3..6e-3),
# 3x128 1.840, 2x128 1.782, 1x128 1.717, 2x96 1.709, 3x64 1.708, 4x64 1.748, 2x48 1.711, 2x64 1.677 (lr 2e-3: 1.682,
# batch 16: 1.677, batch 24: 1.693, 2 heads of 32: 1.714). This config stops earlier (3000 steps) so that the whole
# run, not only the moment it passes 1.781, fits in half the time: it ends at 1.719.
# Control: GPT-2 at the same 2 x 64 shape ends at 1.868 after the same 3000 steps and needs ~5000 steps (~31 s, half
# the quickstart's time) to reach 1.781. The shape buys GPT-2 itself a factor of two; the architecture (RMSNorm,
# RoPE, SwiGLU) the rest. README, "LLaMA on the quickstart's budget".
model = 'llama'
dataset = 'shakespeare_char'
out_dir = 'out/llama_shakespeare_char_fast'

eval_interval = 250
eval_iters = 20
log_interval = 250

batch_size = 12
block_size = 64
n_layer = 2
n_head = 4  # head size 16
n_kv_head = 4
n_embd = 64
ffn_hidden = 176  # SwiGLU hidden: int(8/3 * 64) = 170 rounded up to a multiple of 8
tie_embeddings = False
dropout = 0.0

learning_rate = 3e-3
max_iters = 3000
lr_decay_iters = 3000
min_lr = 3e-4
warmup_iters = 100
beta2 = 0.99
