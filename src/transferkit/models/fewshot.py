"""Heads fitted without gradient steps: ``--head prototype`` and ``--head knn:K``.

Both see the same features a linear head would (the input of the model's classifier), centred by
the mean of the training features and L2-normalised: SimpleShot's CL2N transform (Wang, Chao,
Weinberger & van der Maaten 2019). The paper centres on the mean of a base-class training set;
transfer learning has no base set of the target domain, so the mean of the labelled training
images' features is used instead (a deviation from the paper, chosen because it is all we have).

- ``prototype``: nearest class mean. Logits are ``-||z - c_k||^2 / 2`` scaled by ``SCALE`` (a
  linear layer: weights c_k, bias -||c_k||^2 / 2), so the argmax is the nearest centroid.
- ``knn:K``: the K most cosine-similar training images vote, each with weight exp(sim / TAU)
  (the weighted k-NN of DINO's evaluation); logits are the log of the vote shares.

A class with no training images (a ``ClassLabel`` that lists unused names, a ``--train-limit``
that drops a rare class) is never predicted, nor ranked above a class that has images: it has no
centroid (a zero one would score 0, above every class the image is far from) and no votes. Its
logit is a constant just below the lowest any class with images can reach, ``ABSENT``; a finite
constant of the same size as the other logits, so it survives safetensors, ONNX, int8 output
ranges and the temperature fit unchanged.

Everything is a buffer: the heads live in ``model.safetensors`` like any other weights, export
to ONNX and serve as they are. The run's temperature (calibration) then makes their
probabilities honest; ``SCALE`` and ``TAU`` only give that fit a sensible place to start.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferkit.core.errors import UserError

SCALE = 10.0   # cosine classifiers use 10-30: unit vectors' distances span [0, 4]
TAU = 0.1      # k-NN vote temperature on cosine similarity
FLOOR = 1e-4   # vote share of a class no neighbour voted for: finite logits for the temperature fit
# A prototype logit is SCALE * (z.c - |c|^2 / 2) with |z| = 1 and |c| <= 1 (a mean of unit vectors):
# never below -1.5 * SCALE. A class without training images sits under that, at -2 * SCALE.
ABSENT = -2.0 * SCALE


def is_fewshot(spec: str | None) -> bool:
    return spec == "prototype" or str(spec or "").startswith("knn")


def parse_knn(spec: str) -> int:
    k = spec.split(":", 1)[1].strip() if ":" in spec else ""
    if not k.isdigit() or int(k) < 1:
        raise UserError(f"--head {spec}: give the number of neighbours, for example knn:5")
    return int(k)


def cl2n(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Centre, then L2-normalise (SimpleShot's CL2N)."""
    return F.normalize(x.float() - center, dim=1)


class _Resizable(nn.Module):
    """Buffers whose sizes come from the state dict: the head is built before its support set is known."""

    sizes_from_state = True  # models/weights.load_exactly lets these buffers differ in shape

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buffer in self._buffers.items():
            incoming = state_dict.get(prefix + name)
            if buffer is not None and incoming is not None and incoming.shape != buffer.shape:
                self._buffers[name] = torch.empty_like(incoming, dtype=buffer.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PrototypeHead(_Resizable):
    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.register_buffer("center", torch.zeros(in_features))
        self.register_buffer("weight", torch.zeros(num_classes, in_features))
        self.register_buffer("bias", torch.zeros(num_classes))

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features, labels = features.to(self.center.device), labels.to(self.center.device)
        self.center.copy_(features.float().mean(0))
        z = cl2n(features, self.center)
        present = torch.zeros(self.num_classes, dtype=torch.bool, device=self.center.device)
        for c in range(self.num_classes):
            members = z[labels == c]
            present[c] = len(members) > 0
            self.weight[c] = members.mean(0) if len(members) else 0.0
        self.weight.mul_(SCALE)
        self.bias.copy_(-0.5 * SCALE * self.weight.pow(2).sum(1) / SCALE ** 2)
        self.bias[~present] = ABSENT  # zero weights: the logit is ABSENT whatever the image

    def forward(self, x):
        return F.linear(cl2n(x, self.center), self.weight, self.bias)


class KNNHead(_Resizable):
    def __init__(self, in_features: int, num_classes: int, k: int):
        super().__init__()
        self.in_features, self.num_classes, self.k = in_features, num_classes, k
        self.register_buffer("center", torch.zeros(in_features))
        self.register_buffer("support", torch.zeros(1, in_features))
        self.register_buffer("votes", torch.zeros(1, num_classes))  # one-hot labels of the support set

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        device = self.center.device
        self.center = features.float().mean(0).to(device)
        self.support = cl2n(features.to(device), self.center)
        self.votes = F.one_hot(labels.long(), self.num_classes).float().to(device)

    def forward(self, x):
        similarity = cl2n(x, self.center) @ self.support.t()
        top, index = similarity.topk(min(self.k, self.support.shape[0]), dim=1)
        weights = ((top - 1) / TAU).exp()  # shifted by the largest possible similarity: no overflow
        shares = (weights.unsqueeze(-1) * self.votes[index]).sum(1)
        logits = (shares / shares.sum(1, keepdim=True) + FLOOR).log()
        # Some class always has a share > 0, so one without training images never wins; it also
        # ranks below the classes that have images but no votes here (log FLOOR), at ABSENT.
        has_images = self.votes.sum(0) > 0
        return torch.where(has_images, logits, torch.full_like(logits, ABSENT))


def make_fewshot_head(spec: str, in_features: int, num_classes: int) -> nn.Module:
    if spec == "prototype":
        return PrototypeHead(in_features, num_classes)
    return KNNHead(in_features, num_classes, parse_knn(spec))
