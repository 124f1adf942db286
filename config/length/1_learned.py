# Learned absolute positions (GPT-2, Radford et al. 2019): the table ends at block_size.
position = 'learned'
