# Rotary positions (RoPE, Su et al. 2021): q and k rotated by their position (LLaMA).
position = 'rope'
