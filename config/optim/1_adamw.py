# AdamW (Loshchilov & Hutter 2019) with warmup and cosine decay: the baseline every other row is measured against.
optimizer = 'adamw'
schedule = 'cosine'
