# Mamba (Gu & Dao 2023): a selective state space model, per-channel input-dependent decay, causal conv, gated.
model = 'mamba'
n_layer = 7  # a Mamba block holds ~6 d^2 parameters, half a Transformer block's 12 d^2
d_model = 128
learning_rate = 4e-3
_parent = '5_retnet'
_claim = ('Gu & Dao 2023 (Figure 4): lower perplexity than RetNet, H3 and Hyena at every size on the Pile, and '
          "Transformer++'s, the first attention-free model to match it.")
