# Mamba on Tiny Shakespeare characters, on the GPT-2 quickstart's budget (config/shakespeare_char.py: context 64,
# batch 12, 2000 iterations), so the two compare directly:  python train.py config/mamba_shakespeare_char.py
# Size: 7 Mamba layers x 128 wide = 0.82M parameters vs the quickstart GPT-2's 0.80M (4 layers x 128). A Mamba
# layer has ~6 d^2 parameters, half a Transformer block's 12 d^2, so at equal width it gets about twice the layers
# (the paper's convention: mamba-130m has 24 layers where GPT-3 Small has 12).
model = 'mamba'
dataset = 'shakespeare_char'
out_dir = 'out/mamba_shakespeare_char'

eval_interval = 250
eval_iters = 20
log_interval = 50

batch_size = 12
block_size = 64
n_layer = 7
d_model = 128
d_state = 16
expand = 2

# Mamba trains well at a higher learning rate than the GPT-2 quickstart's 1e-3 (the paper's recipe also raises
# it over GPT-3's); the ten-fold cosine decay and the warmup are the quickstart's.
learning_rate = 2e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 2e-4
warmup_iters = 100
beta2 = 0.99  # larger than the usual 0.95: few tokens per step
