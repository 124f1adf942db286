# Side branch of row 5: ReLU^2 (So et al. 2021, Primer) instead of SwiGLU, at its 4 * n_embd hidden size.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'relu2'
position = 'rope'
_parent = '5_rope'
