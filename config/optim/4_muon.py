# Muon (Jordan et al. 2024): Newton-Schulz orthogonalised momentum for the hidden matrices, AdamW for the rest.
optimizer = 'muon'
schedule = 'cosine'
_parent = '1_adamw'
_claim = "Muon: ~1.35x fewer steps than AdamW (the nanoGPT speedrun)"
