"""Save, inspect and load a checkpoint in a dozen lines."""

import torch
from torch import nn

import torchresume as tr

net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
tr.save_checkpoint(net, "quickstart.ckpt", append_dict={"epoch_num": 1})
params = tr.load_checkpoint("quickstart.ckpt")
fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
print(tr.load_param_into_net(fresh, params))
assert torch.equal(fresh[0].weight, net[0].weight)
