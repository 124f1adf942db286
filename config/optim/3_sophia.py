# Sophia-G (Liu et al. 2023): momentum over a diagonal Gauss-Newton-Bartlett Hessian estimate (every 10 steps), clipped.
optimizer = 'sophia'
schedule = 'cosine'
_parent = '1_adamw'
_claim = "Sophia: 2x fewer steps than AdamW to the same loss (Liu et al. 2023); disputed by later replications"
