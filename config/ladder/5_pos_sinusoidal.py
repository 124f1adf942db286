# Side branch of row 5: fixed sinusoids (Vaswani et al. 2017) instead of RoPE.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'sinusoidal'
_parent = '5_rope'
