# T5 v1.1 (Raffel et al. 2020; Shazeer 2020): pre-norm RMS-style norms, relative position buckets, gated-GELU FFN.
model = 't5'
objective = 'prefix'
src_len = 128  # as 1_transformer.py: the same split of each block, the same predicted positions
d_model = 128
n_head = 4
d_kv = 32  # n_head * d_kv = d_model
d_ff = 256  # gated: 3 matrices of d_model x d_ff; 2 + 2 layers then hold ~0.79M parameters
n_encoder_layer = 2
n_decoder_layer = 2
dropout = 0.0
learning_rate = 2e-3
_parent = '1_transformer'
_claim = ("Shazeer 2020 (Table 1), the FFN of T5 v1.1: gated GELU lowers the T5 encoder-decoder's held-out log-"
          'perplexity from 1.997 (ReLU) to 1.942 at equal compute; Raffel et al. 2020 keep the 2017 '
          'architecture otherwise (pre-norm, relative positions).')
