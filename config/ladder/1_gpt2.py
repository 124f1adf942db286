# GPT-2's choices: LayerNorm with biases, GELU, learned positions, tied embeddings (the lab model's defaults).
model = 'lab'
_parent = None
