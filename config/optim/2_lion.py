# Lion (Chen et al. 2023): the sign of an interpolated momentum; 3x lower lr and 3x higher weight decay, as advised.
optimizer = 'lion'
schedule = 'cosine'
learning_rate = 3e-4
weight_decay = 0.3
_parent = '1_adamw'
_claim = "Lion: matches AdamW at small scale, ahead at large (Chen et al. 2023)"
