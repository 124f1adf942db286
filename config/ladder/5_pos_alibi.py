# Side branch of row 5: ALiBi (Press et al. 2022) instead of RoPE.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'alibi'
_parent = '5_rope'
