"""Users' own modules: ``path/file.py:Class`` for a whole model or a head.

Loading such a spec *runs that file*, as importing any Python file does: only use runs and
files you trust. A training run copies the file into ``RUN_DIR/code/`` and stores the spec as
``@run/code/file.py:Class``, so the run keeps working after the original moves or changes.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

from transferkit.errors import UserError

RUN_PREFIX = "@run/"


def parse_spec(spec: str) -> tuple[Path, str]:
    path, _, cls = spec.rpartition(":")
    if not path.endswith(".py") or not cls.isidentifier():
        raise UserError(f"'{spec}' must look like path/to/file.py:ClassName")
    return Path(path).expanduser(), cls


def load_module(path: str | Path):
    """Import a Python file by path (runs it); the same content is imported once."""
    path = Path(path).expanduser()
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"{path}: not an existing .py file")
    # A name derived from the file's content: two different files never shadow each other.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    module_name = f"transferkit_user_{path.stem}_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise UserError(f"{path} failed to import: {type(exc).__name__}: {exc}") from None
    return module


def load_class(spec: str):
    path, cls_name = parse_spec(spec)
    if not path.is_file():
        raise UserError(f"{spec}: file {path} not found")
    module = load_module(path)
    if not hasattr(module, cls_name):
        raise UserError(f"{path} has no class '{cls_name}'")
    return getattr(module, cls_name)


def build_user_model(spec: str, num_classes: int):
    cls = load_class(spec)
    try:
        return cls(num_classes=num_classes)
    except TypeError as exc:
        raise UserError(f"{spec}: the model must accept num_classes=..., calling it failed: {exc}") from None


def build_user_head(spec: str, in_features: int, num_classes: int):
    cls = load_class(spec)
    try:
        return cls(in_features, num_classes)
    except TypeError as exc:
        raise UserError(f"{spec}: a head is built as Class(in_features, num_classes), which failed: {exc}") from None


def is_user_spec(spec: str | None) -> bool:
    return bool(spec) and ".py:" in spec


def copy_into_run(spec: str, run_dir: Path) -> str:
    """Copy the spec's file under RUN_DIR/code/ and return the run-relative spec."""
    path, cls = parse_spec(spec)
    target = run_dir / "code" / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.resolve() != target.resolve():
        shutil.copyfile(path, target)
    return f"{RUN_PREFIX}code/{path.name}:{cls}"


def resolve_run_spec(spec: str, run_dir: Path) -> str:
    return str(run_dir / spec[len(RUN_PREFIX):]) if spec.startswith(RUN_PREFIX) else spec


def activate_run_code(run_dir: Path, run: dict) -> None:
    """Point the run's stored specs at its own copies of the user's files."""
    for key in ("name", "head"):
        run["model"][key] = resolve_run_spec(run["model"][key], Path(run_dir))
    run["backbone"]["name"] = run["model"]["name"]
