# Fine-tune OpenAI's GPT-2 (124M, from the Hugging Face hub) on Tiny Shakespeare in its own BPE tokens, as nanoGPT's
# finetune_shakespeare.py does with gpt2-xl:
#     python train.py config/finetune_shakespeare.py
# The weights, the model file (models/gpt2.py) and its config come from the checkpoint (common/hf.py): a model
# setting here is refused unless it agrees, except block_size (cropped below GPT-2's 1024) and dropout. The dataset
# must be in the model's tokens (prepare/shakespeare.py: GPT-2 BPE). Offline, point at a local copy instead:
# --init_from=path/to/gpt2 (a directory holding config.json and model.safetensors). Other sizes: hf:gpt2-medium,
# hf:gpt2-large, hf:gpt2-xl. Then: python sample.py --ckpt=out/finetune_shakespeare --start="ROMEO:"
init_from = 'hf:gpt2'
dataset = 'shakespeare'
out_dir = 'out/finetune_shakespeare'

# nanoGPT's recipe: 32 sequences of 1024 tokens per step, a small constant learning rate, a few steps (the data
# is ~300K tokens: one epoch is about 10 steps)
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
learning_rate = 3e-5
schedule = 'constant'
dropout = 0.1
eval_interval = 5
eval_iters = 40
log_interval = 1
