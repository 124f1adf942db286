# Mamba-2 (Dao & Gu 2024): a scalar decay per head, the SSD chunked form of matmuls, gated RMSNorm.
model = 'mamba2'
n_layer = 3  # wider and shallower than Mamba's 7 x 128: larger matmuls: 0.69x GPT-2's CPU speed (6 x 128: 0.49x)
d_model = 200
d_state = 64  # N (the reference: 128; the paper sweeps 64 to 256)
head_dim = 80  # P: E = 400 channels in 5 heads, one B/C group; ~0.82M parameters, as the others
learning_rate = 8e-3
_parent = '6_mamba'
_claim = ("Dao & Gu 2024: SSD trains 2-8x faster than Mamba's selective scan, with perplexity at or below "
          "Mamba's at the same size (the Pile).")
