# GPT-2 (Radford et al. 2019): decoder only, pre-LN, learned positions, GELU FFN, tied embeddings.
model = 'gpt2'
n_layer = 4
n_head = 4
n_embd = 128
learning_rate = 4e-3
_parent = '1_transformer'
_claim = ('Liu et al. 2018 (the decoder-only line GPT follows): a decoder-only Transformer models long text '
          'better than the encoder-decoder; GPT-2 itself reports no comparison with the 2017 model.')
