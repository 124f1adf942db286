# Side branch of row 5: one block's weights used by all 4 layers (Universal Transformer, ALBERT).
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'rope'
share_layers = True
_parent = '5_rope'
