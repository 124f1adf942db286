# T5 (models/t5.py, v1.1 choices) on Shakespeare characters at the size and budget of the GPT-2 quickstart
# (config/shakespeare_char.py). The prefix objective, as config/transformer_shakespeare_char.py: each 64-token block
# is split, the encoder reads the first src_len = 32 tokens, the decoder predicts the remaining 33 targets
# (targets[:, 31:]); val loss is the cross-entropy on those positions only. --objective=span trains T5's span
# corruption instead (15% of the tokens in spans of mean length 3; its val loss is over the span targets and
# does not compare with the prefix one).
# $ python train.py config/t5_shakespeare_char.py

model = 't5'
dataset = 'shakespeare_char'
out_dir = 'out/t5_shakespeare_char'
eval_interval = 250
eval_iters = 20
log_interval = 10

batch_size = 12
block_size = 64
gradient_accumulation_steps = 1

# model (Config fields of models/t5.py)
objective = 'prefix'
src_len = 32
d_model = 128
n_head = 4
d_kv = 32  # n_head * d_kv = d_model
d_ff = 256  # gated GELU: three d_model x d_ff matrices, ~ the 2017 FFN's two of 4 * d_model
n_encoder_layer = 2
n_decoder_layer = 2
activation = 'gated-gelu'  # v1.1; 'relu' with tie_word_embeddings = True and dropout = 0.1 is v1.0
tie_word_embeddings = False
dropout = 0.0  # v1.1 pre-training uses none

# optimizer: T5 pre-trains with Adafactor and an inverse-square-root schedule; here the repo's AdamW recipe (the
# quickstart's warmup, cosine decay, beta2) with the evolution study's untuned 2e-3 (config/evolution/1b_t5.py)
learning_rate = 2e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 2e-4
warmup_iters = 100
beta2 = 0.99
