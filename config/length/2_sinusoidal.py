# Fixed sinusoids (Vaswani et al. 2017), added to the embeddings.
position = 'sinusoidal'
