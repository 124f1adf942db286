# ALiBi (Press et al. 2022): a fixed score of -slope x distance, one slope per head.
position = 'alibi'
