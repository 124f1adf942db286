# Side branch of row 5: multi-query attention (Shazeer 2019): one key/value head.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'rope'
n_kv_head = 1
_parent = '5_rope'
