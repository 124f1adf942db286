# BERT (Devlin et al. 2019): a bidirectional encoder trained as a masked LM; its loss is on 15% of positions.
model = 'bert'
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
learning_rate = 1e-3
_parent = None
_claim = ('Devlin et al. 2019: masked-LM pre-training beats left-to-right for fine-tuned understanding tasks '
          '(GLUE); not a claim about LM loss, so it sits apart.')
_table = 'masked LM (BERT)'
