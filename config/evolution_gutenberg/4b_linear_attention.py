# Linear attention (Katharopoulos et al. 2020): no softmax, a running sum of elu(k)+1 features, O(1) state per token.
model = 'linear_attention'
n_layer = 4
n_head = 4
n_embd = 128  # GPT-2's shape and parameter count
form = 'chunked'
chunk_size = 256  # = block_size: one chunk per block
learning_rate = 4e-3
_parent = '2_gpt2'
_claim = ("Katharopoulos et al. 2020: close to softmax attention's quality (on images and speech) with "
          "autoregressive prediction up to 4000x faster; a loss per token somewhat worse than softmax's is what"
          ' the paper shows, not better.')
