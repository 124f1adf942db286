# + SwiGLU (Shazeer 2020) at equal parameters: hidden 2/3 of GELU's 4 * n_embd (lab's default for swiglu).
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
_parent = '3_no_bias'
