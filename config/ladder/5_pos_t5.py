# Side branch of row 5: T5's bucketed relative bias (Raffel et al. 2020) instead of RoPE.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 't5'
_parent = '5_rope'
