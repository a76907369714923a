"""Train a PyTorch twin of a D2L modern network on Fashion-MNIST with D2L's recipe, printing the
test accuracy after each epoch: the PyTorch side of docs/results.md's zoo table.

    python bench/zoo_accuracy.py googlenet --size 28 --epochs 1
    python bench/zoo_accuracy.py alexnet --size 65 --threads 1
    python bench/zoo_accuracy.py resnet18 --size 28 --epochs 2 --seed 1

The networks are D2L's PyTorch definitions (d2l-en v0.17, chapter 7, with explicit in-channels),
the twins of numbaconv/benchmarks/twins.py that the parity tests check; AlexNet's and VGG's
first Linear takes what their convolutions leave of a ``--size`` image (D2L's 6400 and 128x7x7
at 224). The loop is D2L's ``train_ch6``: Xavier-uniform weights for every
Linear and Conv2d (biases at PyTorch's default), SGD at the model's D2L learning rate,
cross-entropy, the training set shuffled each epoch in D2L's batch size; the test accuracy in
evaluation mode. Images are scaled to [0, 1] (``/255``, as numbaconv's loader and D2L's
``ToTensor`` do) and each batch is resized to ``--size`` by
``F.interpolate(mode="bilinear", align_corners=False)``, as ``numbaconv run --resize`` does.

Imports PyTorch and NumPy only (twins.py is loaded by its path, not as part of numbaconv), so its
numbers are PyTorch's own.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import sys
import time

import numpy as np

DATA_DIR = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: D2L's recipe per network (SGD): learning rate and batch size; numbaconv registers the same
#: as each model's ``TRAIN_DEFAULTS`` (tests/test_zoo_accuracy_script.py checks).
RECIPES = {
    "alexnet": {"lr": 0.01, "batch_size": 128},
    "vgg11": {"lr": 0.05, "batch_size": 128},
    "nin": {"lr": 0.1, "batch_size": 128},
    "googlenet": {"lr": 0.1, "batch_size": 128},
    "densenet": {"lr": 0.1, "batch_size": 256},
    "resnet18": {"lr": 0.05, "batch_size": 256},
}

#: Batches the test set is evaluated in (a memory bound only; the accuracy does not depend on it).
EVAL_BATCH = 256


# --------------------------------------------------------------------------------------- data

def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or not) as a ``uint8`` array of its dimensions."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} bytes for the shape {shape}")
    return data.reshape(shape)


def _find(data_dir: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {stem}[.gz] in {data_dir}")


def load_fashion_mnist(data_dir: str):
    """``(train_x, train_y, test_x, test_y)``: ``float32 (N, 1, 28, 28)`` images in [0, 1] and
    ``int64 (N,)`` labels."""
    def images(stem):
        return (read_idx(_find(data_dir, stem))[:, None].astype(np.float32)
                / np.float32(255))

    def labels(stem):
        return read_idx(_find(data_dir, stem)).astype(np.int64)

    return (images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
            images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"))


# ------------------------------------------------------------------------------ D2L's networks

def _twins():
    """numbaconv/benchmarks/twins.py (D2L's PyTorch networks), loaded by its path: the
    process imports no numbaconv."""
    spec = importlib.util.spec_from_file_location(
        "twins", os.path.join(ROOT, "numbaconv", "benchmarks", "twins.py"))
    twins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(twins)
    return twins


def build(name: str, size: int, torch, in_channels: int = 1, num_classes: int = 10):
    """D2L's PyTorch network ``name`` for ``(N, in_channels, size, size)`` images."""
    if name not in RECIPES:
        raise ValueError(f"model must be one of {', '.join(RECIPES)}, got {name!r}")
    options = {"input_size": size} if name in ("alexnet", "vgg11") else {}
    return _twins().TWINS[name](torch, num_classes=num_classes, in_channels=in_channels,
                                **options)


# ------------------------------------------------------------------------------ D2L's train_ch6

def train(net, data, epochs: int, lr: float, batch_size: int, size: int, torch,
          seed: int) -> list[dict]:
    """D2L's ``train_ch6`` on ``data`` (:func:`load_fashion_mnist`'s tuple), each batch resized
    to ``size``; prints and returns one dict per epoch (loss, train_acc, test_acc, seconds)."""
    nn, F = torch.nn, torch.nn.functional
    train_x, train_y, test_x, test_y = (torch.from_numpy(a) for a in data)

    def init_weights(m):
        if type(m) in (nn.Linear, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)

    def resized(x):
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    net.apply(init_weights)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    shuffler = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        net.train()
        started = time.perf_counter()
        loss_sum, hits = 0.0, 0
        order = torch.randperm(len(train_x), generator=shuffler)
        for start in range(0, len(train_x), batch_size):
            rows = order[start:start + batch_size]
            x, y = resized(train_x[rows]), train_y[rows]
            optimizer.zero_grad()
            logits = net(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += float(loss) * len(rows)
                hits += int((logits.argmax(dim=1) == y).sum())
        seconds = time.perf_counter() - started
        net.eval()
        test_hits = 0
        with torch.no_grad():
            for start in range(0, len(test_x), EVAL_BATCH):
                logits = net(resized(test_x[start:start + EVAL_BATCH]))
                test_hits += int((logits.argmax(dim=1) == test_y[start:start + EVAL_BATCH]).sum())
        record = {"epoch": epoch, "train_loss": loss_sum / len(train_x),
                  "train_acc": hits / len(train_x), "test_acc": test_hits / len(test_x),
                  "train_seconds": seconds}
        history.append(record)
        print(f"epoch {epoch}/{epochs}  loss {record['train_loss']:.4f}  "
              f"train_acc {record['train_acc']:.4f}  test_acc {record['test_acc']:.4f}  "
              f"{len(train_x) / seconds:,.0f} examples/s  ({seconds:.1f} s)", flush=True)
    return history


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(RECIPES))
    parser.add_argument("--size", type=int, required=True,
                        help="side each batch is resized to (bilinear), as numbaconv's --resize")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, help="default: the model's D2L learning rate")
    parser.add_argument("--batch-size", type=int, help="default: the model's D2L batch size")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the shuffling "
                        "and dropout")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--data", default=DATA_DIR, help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--limit", type=int, help="train and test on the first LIMIT images of "
                        "each set only (for quick checks; the recorded runs use all)")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.model]
    args.lr = recipe["lr"] if args.lr is None else args.lr
    args.batch_size = recipe["batch_size"] if args.batch_size is None else args.batch_size
    for name in ("size", "epochs", "batch_size", "threads", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        data = load_fashion_mnist(args.data)
    except (OSError, ValueError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    if args.limit is not None:
        data = tuple(array[:args.limit] for array in data)
    try:
        net = build(args.model, args.size, torch)
        with torch.no_grad():  # one image through every layer: is the size too small?
            net.eval()(torch.zeros(1, 1, args.size, args.size))
    except RuntimeError as error:
        print(f"Error: {args.model} does not take {args.size}x{args.size} images: "
              f"{str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    parameters = sum(p.numel() for p in net.parameters())
    print(f"training PyTorch {torch.__version__} {args.model} on {len(data[0])} images at "
          f"{args.size}x{args.size}: sgd lr {args.lr:g}, batch {args.batch_size}, "
          f"{args.epochs} epochs, {parameters} parameters, {args.threads} threads", flush=True)
    train(net, data, args.epochs, args.lr, args.batch_size, args.size, torch, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
