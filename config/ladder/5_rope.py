# + RoPE (Su et al. 2021) instead of learned positions: LLaMA's choices with multi-head attention.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'rope'
_parent = '4_swiglu'
