# LLaMA (Touvron et al. 2023): RMSNorm, rotary positions, SwiGLU FFN, no biases.
model = 'llama'
n_layer = 4
n_head = 4
n_kv_head = 4  # full multi-head, so the parameter count matches GPT-2's
n_embd = 128
ffn_hidden = 344  # int(8/3 * 128) rounded up to a multiple of 8: 3 * 128 * 344 ~ GPT-2's 8 * 128^2
tie_embeddings = True
learning_rate = 1e-3
_parent = '2_gpt2'
_claim = ('Its parts each lowered loss at equal compute where first published: SwiGLU 1.944 vs ReLU 1.997 log-'
          'perplexity (Shazeer 2020, Table 1), RoPE faster convergence than learned positions (Su et al. 2021);'
          ' the LLaMA paper has no ablation of its own.')
