# The evolution study (README "Results"), Gutenberg books as characters: the second, larger corpus (301 books, 72
# authors, 100M characters; every 10th book is val), a longer block (256), the same generations and sizes as
# config/evolution (~0.8M non-embedding parameters) and the same recipe.
#   python prepare/gutenberg.py --tokenizer char --input ../shared/data/gutenberg   # data/gutenberg_char
#   python bench.py --evolution config/evolution_gutenberg    # 9 rows, 3 seeds, 2 protocols (wall time: README)
dataset = 'gutenberg_char'
batch_size = 8
block_size = 256
warmup_iters = 20
beta2 = 0.99
weight_decay = 0.1
eval_interval = 50
eval_iters = 15  # 15 batches x 8 x 129 scored positions: ~15K characters per evaluation
eval_from = 127  # encoder-decoders predict targets[127:] of a 256-token block (src_len 128): score every model there
log_interval = 50
clock = 'process'  # the time budget counts this process's CPU seconds: other jobs do not shrink it
# Equal tokens: 200 steps of 2,048 tokens (410K characters); equal time: 30 s of CPU time (one thread).
_budget = dict(tokens_iters=200, seconds=30.0, seeds=3, lr_mults=(0.5, 1.0, 2.0))
