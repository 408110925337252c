"""What of a run belongs to the machine it was trained on, kept apart from what may be published.

``run.json`` is part of a published model folder (transferkit needs it to load the run), so it
holds no path of this machine: the data spec as the data root's own name (``/home/me/data/pets``
-> ``pets``), the run folder by its name, a user's model file by its file name, no cache folder.
The paths as given go to ``local.json`` beside it, which ``read_run`` lays back over run.json on
this machine (so eval, report and a resume find the data again) and which the model card's upload
set leaves out. A run folder copied elsewhere without ``local.json`` still loads; commands that need
the data then ask for ``--data``.
"""
from __future__ import annotations

import copy
import os
import re

from transferkit.models.usercode import is_user_spec
from transferkit.models.weights import looks_like_file

LOCAL_FILE = "local.json"
# A token of free text that is a path of this machine: absolute, home-relative or ./-relative.
_PATH_TOKEN = re.compile(r"(?<![\w:])(?:~|\.{1,2})?/[^\s;,()]+")


def without_folders(value: str) -> str:
    """``/home/me/data/pets:image=img`` -> ``pets:image=img``: the folders above the named file or
    folder are this machine's (options after the path are kept)."""
    path = value.split(":image=")[0].split(":label=")[0]
    if is_user_spec(path):
        path = path.rpartition(":")[0]  # file.py:Class: the class is no path
    head = os.path.dirname(path.rstrip("/\\"))
    return value[len(head):].lstrip("/\\") if head else value


def _in_text(text: str) -> str:
    """Paths inside a sentence (a log line, ``file /home/me/w.safetensors``) cut to their last part."""
    return _PATH_TOKEN.sub(lambda m: os.path.basename(m.group(0).rstrip("/")) or m.group(0), text)


def _shared_config(config: dict) -> dict:
    shared = dict(config)
    for key in ("data", "out"):
        if shared.get(key):
            shared[key] = without_folders(str(shared[key]))
    for key in ("model", "head"):
        if is_user_spec(shared.get(key)):
            shared[key] = without_folders(shared[key])
    if shared.get("weights") and looks_like_file(str(shared["weights"])):
        shared["weights"] = without_folders(str(shared["weights"]))
    if shared.get("cache_dir"):
        shared["cache_dir"] = ""  # elsewhere, the default cache folder of that machine
    return shared


def split_local(record: dict) -> tuple[dict, dict]:
    """``(shared, local)``: the record without this machine's paths, and the values they replaced
    (an overlay with run.json's own layout: ``{"config": {...}, "data": {...}, ...}``)."""
    shared = copy.deepcopy(record)
    if "config" in shared:
        shared["config"] = _shared_config(shared["config"])
    if isinstance(shared.get("data"), dict) and shared["data"].get("spec"):
        shared["data"]["spec"] = without_folders(str(shared["data"]["spec"]))
    backbone = shared.get("backbone") or {}
    if backbone.get("weights") and looks_like_file(str(backbone["weights"])):
        backbone["weights"] = without_folders(str(backbone["weights"]))
    if backbone.get("weights_source"):
        backbone["weights_source"] = _in_text(str(backbone["weights_source"]))
    if shared.get("feature_cache"):
        shared["feature_cache"] = _in_text(str(shared["feature_cache"]))
    local = {}
    for key, value in record.items():
        if isinstance(value, dict) and isinstance(shared.get(key), dict):
            changed = {k: v for k, v in value.items() if shared[key].get(k) != v}
            if changed:
                local[key] = changed
        elif shared.get(key) != value:
            local[key] = value
    return shared, local


def with_local(shared: dict, local: dict) -> dict:
    """run.json with local.json laid over it: the record as it was on the machine that trained it."""
    run = dict(shared)
    for key, value in local.items():
        run[key] = {**run[key], **value} if isinstance(value, dict) and isinstance(run.get(key), dict) else value
    return run
