# The 2017 Transformer (Vaswani et al.): encoder-decoder, post-LN, sinusoidal positions, ReLU FFN.
model = 'transformer'
src_len = 128  # the encoder reads the first half of each block; the decoder predicts targets[127:]
d_model = 128
n_head = 4
d_ff = 384  # 3 * d_model: 2 + 2 layers then hold ~0.79M parameters, as the others
n_encoder_layer = 2
n_decoder_layer = 2
dropout = 0.0
label_smoothing = 0.0  # plain cross-entropy like the others (the paper's 0.1: config/transformer_shakespeare_char.py)
learning_rate = 2e-3  # the centre of the sweep (x0.5, x1, x2)
_parent = None
_claim = ('Vaswani et al. 2017: better translation than recurrent and convolutional models (28.4 BLEU on WMT14 '
          'EN-DE) at a fraction of their training cost; no earlier generation is in this study.')
