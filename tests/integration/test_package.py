"""The package as users get it: a light `import torchresume`, and a wheel that carries its data."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_loads_the_core_only() -> None:
    probe = ("import sys, torchresume; "
             "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'torchresume.train', "
             "'torchresume.app', 'torchresume.data', 'torch.distributed.checkpoint'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    lazy = subprocess.run([sys.executable, "-c", "import torchresume as tr; print(tr.Model.__module__)"],
                          capture_output=True, text=True, check=True).stdout
    assert lazy.strip() == "torchresume.train.model"


def test_the_facade_names_its_public_api_and_no_submodule() -> None:
    probe = ("import torchresume as tr\n"
             "try:\n    tr.distributed\nexcept AttributeError as e:\n    print(e)\n"
             "print(sorted(n for n in tr.__all__ if not hasattr(tr, n)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["module 'torchresume' has no attribute 'distributed'", "[]"]


def test_wheel_ships_mnist_and_type_information(tmp_path) -> None:
    """Built from this checkout, unpacked elsewhere: the demo's data is found inside the package."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=600)
    [wheel] = list(tmp_path.glob("torchresume-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {"torchresume/py.typed", "torchresume/app/mnist_data/t10k-images-idx3-ubyte.gz",
                "torchresume/app/mnist_data/README.md"} <= names
        z.extractall(tmp_path / "site")
    code = ("import torchresume.app.mnist as m; from torchresume.app.mnist import default_mnist_dir, read_mnist; "
            "x, y = read_mnist(default_mnist_dir(), 'test'); print(m.__file__); print(x.shape, y.shape)")
    env = {k: v for k, v in os.environ.items() if k != "TORCHRESUME_MNIST"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True).stdout.splitlines()
    assert out[0].startswith(str(tmp_path / "site"))  # the unpacked wheel, not this checkout
    assert out[1] == "(10000, 28, 28) (10000,)"
