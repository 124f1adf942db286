# AdamW with warmup-stable-decay (Hu et al. 2024): flat, then a 1-sqrt decay over the last 20% instead of cosine.
optimizer = 'adamw'
schedule = 'wsd'
_parent = '1_adamw'
_claim = "WSD: matches cosine at the end of the run, and can anneal from any plateau checkpoint (Hu et al. 2024; Hägele et al. 2024)"
