# + no biases anywhere (PaLM, LLaMA).
model = 'lab'
norm = 'rmsnorm'
bias = False
_parent = '2_rmsnorm'
