# T5's relative bias (Raffel et al. 2020): a learned score per log-spaced distance bucket.
position = 't5'
