# Side branch of row 5: Mixture-of-Depths (Raposo et al. 2024): 12.5% of tokens through every other block.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'rope'
mod_capacity = 0.125
_parent = '5_rope'
