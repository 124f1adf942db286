# + RMSNorm (Zhang & Sennrich 2019) instead of LayerNorm.
model = 'lab'
norm = 'rmsnorm'
_parent = '1_gpt2'
