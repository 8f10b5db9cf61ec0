"""Seed 003's main.py on torchresume: the same flow, with imports and layer classes changed.

python examples/seed003_main.py [--data_url DIR] [--train_url DIR] [--steps-per-epoch N]
"""

import argparse
import os

import torch
from torch import nn

from torchresume import CheckpointConfig, LossMonitor, Model, ModelCheckpoint, load_checkpoint, load_param_into_net
from torchresume.app.mnist import create_dataset, default_mnist_dir
from torchresume.app.models import LeNet5

parser = argparse.ArgumentParser()
parser.add_argument("--data_url", default=default_mnist_dir(), help="Location of data.")
parser.add_argument("--train_url", default="ckpt", help="Location of training outputs.")
parser.add_argument("--steps-per-epoch", type=int, default=None, help="shorten the run (tests)")
args, unknown = parser.parse_known_args()


def train(data_dir, lr=0.01, momentum=0.9, num_epochs=2, ckpt_name="lenet", init_from=None):  # type: ignore[no-untyped-def]
    ds_train = create_dataset(data_dir, steps_per_epoch=args.steps_per_epoch)
    ds_eval = create_dataset(data_dir, training=False)
    steps_per_epoch = ds_train.get_dataset_size()

    net = LeNet5()
    loss = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr, momentum=momentum)
    if init_from:
        param_dict = load_checkpoint(init_from)
        load_param_into_net(net, param_dict)
        load_param_into_net(opt, param_dict)

    ckpt_cfg = CheckpointConfig(save_checkpoint_steps=steps_per_epoch, keep_checkpoint_max=5)
    ckpt_cb = ModelCheckpoint(prefix=ckpt_name, directory=args.train_url, config=ckpt_cfg)
    loss_cb = LossMonitor(steps_per_epoch)

    model = Model(net, loss, opt, metrics={"acc", "loss"})
    model.train(num_epochs, ds_train, callbacks=[ckpt_cb, loss_cb])
    metrics = model.eval(ds_eval)
    print("Metrics:", metrics)
    return ckpt_cb.latest_ckpt_file_name


last = train(args.data_url)
print("Checkpoints after first training:")
print("\n".join(sorted(x for x in os.listdir(args.train_url) if x.startswith("lenet"))))
train(args.data_url, lr=0.001, init_from=last)
print("Checkpoints after resuming training:")
print("\n".join(sorted(x for x in os.listdir(args.train_url) if x.startswith("lenet"))))
