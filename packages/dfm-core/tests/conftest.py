import torch

# Tiny tensors: one thread avoids oversubscription on small CI machines.
torch.set_num_threads(1)
