# No positions (NoPE, Kazemnejad et al. 2023): the causal mask alone tells order.
position = 'none'
