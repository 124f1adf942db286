# Side branch of row 5: QK-norm (Dehghani et al. 2023): q and k normalised per head.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'rope'
qk_norm = True
_parent = '5_rope'
