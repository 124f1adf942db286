# Side branch of row 5: grouped-query attention (Ainslie et al. 2023): two key/value heads.
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'rope'
n_kv_head = 2
_parent = '5_rope'
