# Mixture of experts (Fedus et al. 2022; Jiang et al. 2024, Mixtral): 8 SwiGLU experts, top-2 routing.
model = 'moe'
n_layer = 4
n_head = 4
n_kv_head = 4
n_embd = 128
n_expert = 8
top_k = 2
ffn_hidden = 176  # two active experts of 176 ~ the dense model's 344: equal active parameters
tie_embeddings = True
learning_rate = 1e-3
_parent = '3_llama'
_claim = ('At equal active parameters (equal FLOPs per token), more experts lower loss per token: Switch '
          'Transformers pre-train up to 7x faster than T5 at the same FLOPs per token (Fedus et al. 2022); '
          'Mixtral 8x7B matches Llama 2 70B with 13B active parameters.')
