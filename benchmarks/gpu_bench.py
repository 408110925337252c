"""GPU fine-tuning speed: transferkit's loop (AMP + channels_last + batched on-device
preprocessing) against the plain loop (fp32, per-image tensors through a DataLoader), both
fine-tuning every layer of ResNet-18 at 224 px on the same in-memory images.

The GPU machine has no network, so the images are synthetic uint8 tensors (speed does not
depend on their content) and the weights are random (speed does not depend on them either).

    PYTHONPATH=src python benchmarks/gpu_bench.py --images 4096 --epochs 2 --batch-size 128
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn
import torchvision


def synthetic(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 256, 256), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def plain(images, labels, epochs: int, batch_size: int) -> dict:
    """The tutorial's loop: Dataset of float tensors, DataLoader, fp32, model.fc replaced, Adam."""
    device = torch.device("cuda")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            x = torch.nn.functional.interpolate(images[i][None].float() / 255, size=(224, 224), mode="bilinear",
                                                antialias=True)[0]
            return (x - mean) / std, labels[i]

    loader = torch.utils.data.DataLoader(Images(), batch_size=batch_size, shuffle=True, num_workers=4)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, 10)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"epoch_seconds": times, "images_per_s": len(labels) / min(times)}


def ours(images, labels, epochs: int, batch_size: int) -> dict:
    """transferkit's engine: uint8 batches resized/normalised on the GPU, bf16/fp16 autocast, channels_last."""
    from transferkit.data.imagesets import TensorImages
    from transferkit.data.transforms import Preprocess, prepare
    from transferkit.engine.batches import Batches
    from transferkit.engine.loop import StepState, train_one_epoch
    from transferkit.engine.optim import amp_dtype, autocast_for, device_precision, make_optimizer, warmup_cosine
    from transferkit.models.freeze import apply_freeze, param_groups, plan_freeze, train_mode
    from transferkit.models.transfer import create_model

    device = torch.device("cuda")
    tm = create_model("resnet18", 10, weights="none")
    frozen = apply_freeze(tm.net, tm.layout, plan_freeze(tm.net, tm.layout, "none"))
    net = tm.net.to(device).to(memory_format=torch.channels_last)
    pre = Preprocess(224, tm.info.mean, tm.info.std, tm.info.interpolation)
    batches = Batches(TensorImages(images, labels, [str(i) for i in range(10)], "synthetic"), batch_size, shuffle=True)
    optimizer = make_optimizer("adamw", param_groups(net, tm.layout, 1e-3, 0.05, 1.0), 1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(epochs * len(batches), len(batches)))
    precision = amp_dtype(device, device_precision(device, "auto"))
    scaler = torch.amp.GradScaler("cuda") if precision == torch.float16 else None
    state, times = StepState(), []
    for epoch in range(epochs):
        state.epoch, state.batch, state.sums = epoch, 0, {"loss": 0.0, "correct": 0, "n": 0}
        torch.cuda.synchronize()
        start = time.perf_counter()
        train_one_epoch(net, batches, lambda raw, s, b, i=None: prepare(raw, pre, device, channels_last=True), optimizer,
                        scheduler, state, set_train=lambda: train_mode(net, frozen), autocast=autocast_for(precision),
                        scaler=scaler)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"epoch_seconds": times, "images_per_s": len(labels) / min(times), "amp": str(precision)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    images, labels = synthetic(args.images)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "images": args.images,
              "batch_size": args.batch_size, "plain": plain(images, labels, args.epochs, args.batch_size),
              "ours": ours(images, labels, args.epochs, args.batch_size)}
    result["speedup_images_per_s"] = result["ours"]["images_per_s"] / result["plain"]["images_per_s"]
    print(json.dumps(result, indent=2))
