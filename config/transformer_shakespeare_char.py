# The 2017 encoder-decoder Transformer (models/transformer.py) on Shakespeare characters, trained with the
# paper's recipe (section 5.3, 5.4) at the size and budget of the GPT-2 quickstart (config/shakespeare_char.py).
# Each 64-token block is split: the first src_len = 32 tokens are the encoder's source, the decoder predicts the
# remaining 33 targets (targets[:, 31:]); val loss is the plain cross-entropy on those positions only.
# $ python train.py config/transformer_shakespeare_char.py

model = 'transformer'
dataset = 'shakespeare_char'
out_dir = 'out/transformer_shakespeare_char'
eval_interval = 250
eval_iters = 20
log_interval = 10

batch_size = 12
block_size = 64
gradient_accumulation_steps = 1

# model (Config fields of models/transformer.py)
src_len = 32
d_model = 128
n_head = 4
d_ff = 4 * d_model  # the paper's ratio, 2048 / 512
n_encoder_layer = 2
n_decoder_layer = 2
dropout = 0.1  # P_drop, section 5.4
label_smoothing = 0.1  # epsilon_ls, section 5.4 (training loss only; eval reports plain cross-entropy)

# optimizer: Adam with the paper's betas and epsilon (section 5.3), no weight decay, no gradient clipping
beta1 = 0.9
beta2 = 0.98
adam_eps = 1e-9
weight_decay = 0.0
grad_clip = 0.0

# Section 5.3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5). train.py's 'noam' schedule computes
# learning_rate * min(step^-0.5, step * warmup_iters^-1.5), so the d_model^-0.5 factor goes here, times a scale
# factor (1.0 in the paper, for d_model 512 and 4000 warmup steps: peak 7e-4). With warmup 100 (this run is 2000
# steps) a factor of 1.0 peaks at 8.8e-3 and stalls (val 3.38 after 250 steps). Val loss after 2000 steps (CPU,
# one seed, eval_iters 20): factor 0.125 -> 2.15, 0.25 -> 2.07, 0.5 -> 2.12. So 0.25: peak 2.2e-3 at step 100,
# 4.9e-4 at step 2000.
schedule = 'noam'
max_iters = 2000
warmup_iters = 100
learning_rate = d_model ** -0.5 * 0.25
