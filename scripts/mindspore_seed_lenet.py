"""Seed 003 in REAL MindSpore: train LeNet5 on the bundled MNIST, save .ckpt files, evaluate.

Run with the MindSpore interpreter (bash scripts/setup_mindspore.sh prints it):

    $MS_PYTHON scripts/mindspore_seed_lenet.py OUT_DIR [--epochs 1]

The pipeline is the seed's (MnistDataset, Resize(32, 32), Rescale, HWC2CHW, TypeCast,
shuffle(64), batch(32, drop_remainder)), LeNet5 and Momentum(0.01, 0.9) are the
seed's, and so is ModelCheckpoint(prefix="lenet", save_checkpoint_steps=1875).
It writes OUT_DIR/ckpt/lenet-{epoch}_1875.ckpt and OUT_DIR/mindspore_eval.json:
the seed's eval (shuffled, 9,984 images) and an in-order eval of the first
9,984 test images, the set ``torchresume eval`` uses.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time

import mindspore as ms
import mindspore.dataset as ds
import mindspore.dataset.transforms as C
import mindspore.dataset.vision as CV
from mindspore import nn
from mindspore.train import CheckpointConfig, LossMonitor, Model, ModelCheckpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mindspore_load_check import LeNet5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unpack_mnist(dst: str) -> str:
    """src/torchresume/app/mnist_data/*.gz -> dst/MNIST/{train,test}/ as MnistDataset expects."""
    for split, prefix in (("train", "train"), ("test", "t10k")):
        os.makedirs(os.path.join(dst, "MNIST", split), exist_ok=True)
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            out = os.path.join(dst, "MNIST", split, f"{prefix}-{kind}")
            if not os.path.exists(out):
                src = os.path.join(REPO, "src", "torchresume", "app", "mnist_data", f"{prefix}-{kind}.gz")
                with gzip.open(src) as f, \
                        open(out, "wb") as g:
                    shutil.copyfileobj(f, g)
    return os.path.join(dst, "MNIST")


def create_dataset(data_dir: str, training: bool = True, batch_size: int = 32,
                   resize: tuple[int, int] = (32, 32), rescale: float = 1 / (255 * 0.3081),
                   shift: float = -0.1307 / 0.3081, buffer_size: int = 64,
                   shuffle: bool = True) -> ds.Dataset:
    """The seed's create_dataset (``shuffle=False`` only for the in-order comparison)."""
    data = ds.MnistDataset(os.path.join(data_dir, "train" if training else "test"),
                           shuffle=False if not shuffle else None)
    data = data.map(input_columns=["image"],
                    operations=[CV.Resize(resize), CV.Rescale(rescale, shift), CV.HWC2CHW()])
    data = data.map(input_columns=["label"], operations=C.TypeCast(ms.int32))
    if shuffle:
        data = data.shuffle(buffer_size=buffer_size)
    return data.batch(batch_size, drop_remainder=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(0)
    data_dir = unpack_mnist(args.out)
    ds_train = create_dataset(data_dir)
    steps = ds_train.get_dataset_size()
    net = LeNet5()
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    opt = nn.Momentum(net.trainable_params(), 0.01, 0.9)
    ckpt_cb = ModelCheckpoint(prefix="lenet", directory=os.path.join(args.out, "ckpt"),
                              config=CheckpointConfig(save_checkpoint_steps=steps,
                                                      keep_checkpoint_max=5))
    model = Model(net, loss, opt, metrics={"acc", "loss"})
    start = time.perf_counter()
    model.train(args.epochs, ds_train, callbacks=[ckpt_cb, LossMonitor(steps)],
                dataset_sink_mode=False)
    seconds = time.perf_counter() - start
    seed_eval = model.eval(create_dataset(data_dir, training=False), dataset_sink_mode=False)
    in_order = model.eval(create_dataset(data_dir, training=False, shuffle=False),
                          dataset_sink_mode=False)
    result = {"mindspore": ms.__version__, "epochs": args.epochs, "train_seconds": seconds,
              "ckpt": ckpt_cb.latest_ckpt_file_name, "seed_eval": seed_eval,
              "in_order_eval_first_9984": in_order}
    with open(os.path.join(args.out, "mindspore_eval.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # MindSpore 2.10 can crash in its own atexit teardown
