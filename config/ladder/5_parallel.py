# Side branch of row 5: attention and FFN in parallel from one norm (GPT-J, PaLM).
model = 'lab'
norm = 'rmsnorm'
bias = False
activation = 'swiglu'
position = 'rope'
parallel = True
_parent = '5_rope'
