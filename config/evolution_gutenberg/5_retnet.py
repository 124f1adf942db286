# RetNet (Sun et al. 2023): linear attention plus a fixed per-head decay, xPos-style rotation and GroupNorm.
model = 'retnet'
n_layer = 4
n_head = 4
n_embd = 128
learning_rate = 2e-3
_parent = '4b_linear_attention'
_claim = ('Sun et al. 2023: lower perplexity than the Linear Transformer and the other efficient-attention '
          "variants at the same size, and below the Transformer's from ~2B parameters up.")
