# Side branch of row 5: no positions at all (NoPE, Kazemnejad et al. 2023) instead of RoPE.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'none'
_parent = '5_rope'
