"""Users' own modules: ``path/file.py:Class`` for a whole model or a head.

Loading such a spec *runs that file*, as importing any Python file does: only use runs and
files you trust. A training run copies the file into ``RUN_DIR/code/`` and stores the spec as
``@run/code/file.py:Class``, so the run keeps working after the original moves or changes.
The file is imported on its own (its folder is not put on ``sys.path``), so the copy behaves
exactly like the original: everything the classes need lives in that one file or in installed
packages.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

from transferkit.core.errors import UserError

RUN_PREFIX = "@run/"


def parse_spec(spec: str) -> tuple[Path, str]:
    path, _, cls = spec.rpartition(":")
    if not path.endswith(".py") or not cls.isidentifier():
        raise UserError(f"'{spec}' must look like path/to/file.py:ClassName")
    return Path(path).expanduser(), cls


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_module(path: str | Path):
    """Import a Python file by path (runs it); the same content is imported once per process."""
    path = Path(path).expanduser()
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"{path}: not an existing .py file")
    # A name derived from the file's content: two different files never shadow each other, and
    # a run's copy of a file already imported from elsewhere is the same module (same classes).
    module_name = f"transferkit_user_{path.stem}_{file_sha256(path)[:12]}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            hint = ("; transferkit imports this one file on its own (and copies only it into the run), "
                    "so put the classes it imports from your own modules into the same file"
                    if isinstance(exc, ModuleNotFoundError) else "")
            raise UserError(f"{path} failed to import: {type(exc).__name__}: {exc}{hint}") from None
    return module


def load_class(spec: str):
    path, cls_name = parse_spec(spec)
    if not path.is_file():
        raise UserError(f"{spec}: file {path} not found")
    module = load_module(path)
    if not hasattr(module, cls_name):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__)
        raise UserError(f"{path} has no class '{cls_name}' (it defines {', '.join(found) or 'no classes'})")
    return getattr(module, cls_name)


def _build(spec: str, what: str, *args, **kwargs):
    from torch import nn

    cls = load_class(spec)
    try:
        module = cls(*args, **kwargs)
    except TypeError as exc:
        raise UserError(f"{spec}: {what}, which failed: {exc}") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"{spec} built a {type(module).__name__}, not a torch.nn.Module")
    return module


def build_user_model(spec: str, num_classes: int):
    return _build(spec, "a model is built as Class(num_classes=...)", num_classes=num_classes)


def build_user_head(spec: str, in_features: int, num_classes: int):
    return _build(spec, "a head is built as Class(in_features, num_classes)", in_features, num_classes)


def is_user_spec(spec: str | None) -> bool:
    return bool(spec) and ".py:" in spec


def copy_file_into_run(path: Path, run_dir: Path) -> str:
    """Copy ``path`` to RUN_DIR/code/ (a new name if another file took its name) -> ``@run/code/NAME``."""
    path = Path(path).expanduser()
    folder = run_dir / "code"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists() and target.read_bytes() != path.read_bytes():
        # --model a/net.py:M --head b/net.py:H: both files are kept.
        target = folder / f"{path.stem}_{file_sha256(path)[:8]}.py"
    if path.resolve() != target.resolve():
        shutil.copyfile(path, target)
    return f"{RUN_PREFIX}code/{target.name}"


def copy_into_run(spec: str, run_dir: Path) -> str:
    """Copy the spec's file under RUN_DIR/code/ and return the run-relative spec."""
    path, cls = parse_spec(spec)
    return f"{copy_file_into_run(path, run_dir)}:{cls}"


def resolve_run_spec(spec: str | None, run_dir: Path) -> str | None:
    if spec and spec.startswith(RUN_PREFIX):
        return str(Path(run_dir) / spec[len(RUN_PREFIX):])
    return spec


def resolve_run_code(run_dir: Path, model_spec: str, head_spec: str, plugin: str | None) -> tuple[str, str]:
    """The stored model and head specs pointed at the run's own copies; the run's plugin imported.

    This runs code stored in the run directory: load only runs you trust.
    """
    if plugin:
        # The copied plugin registers its backbone names again in this process.
        load_module(resolve_run_spec(plugin, Path(run_dir)))
    return resolve_run_spec(model_spec, Path(run_dir)), resolve_run_spec(head_spec, Path(run_dir))


def activate_run_code(run_dir: Path, run: dict) -> None:
    """``resolve_run_code`` for a run.json dict, in place."""
    model = run["model"]
    model["name"], model["head"] = resolve_run_code(run_dir, model["name"], model["head"], model.get("plugin"))
    run["backbone"]["name"] = model["name"]
