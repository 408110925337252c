"""Users' own modules: ``path/file.py:Class`` for a whole model or a head.

Loading such a spec *runs that file*, as importing any Python file does. A training run copies
the file into ``RUN_DIR/code/`` and stores the spec as ``@run/code/file.py:Class``, so the run
keeps working after the original moves or changes. The file is imported on its own (its folder is
not put on ``sys.path``), so the copy behaves exactly like the original: everything the classes
need lives in that one file or in installed packages.

**Code in a run folder runs only when the user says so.** A run folder can come from anywhere (a
Hub download, a colleague), and run.json can name any file, a plugin, or a torch.hub repository.
Loading a run that would run such code is refused, naming the code, unless the caller trusts it:
``--trust-code`` on the command line, ``trust_code=True`` in Python (as transformers'
``trust_remote_code``). There is no "this is my own run" marker to check: anything a run folder
carries, a downloaded one can carry too. Two cases run nothing new and need no flag: ``train``
itself (it imports the file the user named, never the run's copy), and a run file whose content
this process has already imported (a ``--plugin`` given again, the file of a model just trained
in the same Python session): a file is imported under a name made from its content, so importing
an identical copy returns the module already loaded and executes nothing.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from transferkit.core.errors import UserError

RUN_PREFIX = "@run/"
HUB_PREFIX = "hub:"  # hub:owner/repo:entry, built by torch.hub from the repository's own code
TRUST_FLAG = "--trust-code"
# Whether code named by a run may run; set for one command (--trust-code) or one API call (trust_code=True).
_trusted: ContextVar[bool] = ContextVar("transferkit_trust_code", default=False)


@contextmanager
def trusting_code(trust: bool):
    """Within: loading a run may run the code it names (``--trust-code``, ``trust_code=True``)."""
    token = _trusted.set(bool(trust))
    try:
        yield
    finally:
        _trusted.reset(token)


def code_trusted() -> bool:
    return _trusted.get()


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
    module_name = _module_name(path)
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


def _module_name(path: Path) -> str:
    # A name derived from the file's content: two different files never shadow each other, and
    # a run's copy of a file already imported from elsewhere is the same module (same classes).
    return f"transferkit_user_{path.stem}_{file_sha256(path)[:12]}"


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


def code_to_run(run_dir: Path, model_spec: str | None, head_spec: str | None, plugin: str | None) -> list[str]:
    """What loading a run with these stored specs would run that this process has not run yet:
    its model's and head's files, its plugin, a torch.hub repository (one description each)."""
    named = [(resolve_run_spec(spec, run_dir), role) for spec, role in ((model_spec, "model"), (head_spec, "head"))
             if is_user_spec(spec)]
    files = [(parse_spec(spec)[0], role) for spec, role in named]
    if plugin:
        files.append((Path(resolve_run_spec(plugin, run_dir)).expanduser(), "plugin"))
    found = []
    for path, role in files:
        if not (path.is_file() and _module_name(path) in sys.modules):  # imported already: runs nothing new
            shown = path.relative_to(run_dir) if path.is_relative_to(run_dir) else path
            found.append(f"{shown} (its {role})")
    if model_spec and model_spec.startswith(HUB_PREFIX):
        found.append(f"the torch.hub repository {model_spec[len(HUB_PREFIX):].rsplit(':', 1)[0]} (its model, "
                     "downloaded and run)")
    return found


def names_code(model_spec: str | None, head_spec: str | None, plugin: str | None) -> bool:
    """Whether loading a run with these specs runs code other than transferkit's and installed packages'."""
    return bool(plugin) or is_user_spec(model_spec) or is_user_spec(head_spec) or str(model_spec).startswith(HUB_PREFIX)


def require_trust(run_dir: Path, model_spec: str | None, head_spec: str | None, plugin: str | None) -> None:
    """Refuse to load a run that would run code, unless the caller trusts it (see the module's notes)."""
    found = code_to_run(Path(run_dir), model_spec, head_spec, plugin)
    if found and not code_trusted():
        raise UserError(f"{run_dir} would run Python code when loaded: {'; '.join(found)}. A run folder's code runs only "
                        f"when you say so: read it, then pass {TRUST_FLAG} (Python: trust_code=True) if you trust it")


def resolve_run_code(run_dir: Path, model_spec: str, head_spec: str, plugin: str | None) -> tuple[str, str]:
    """The stored model and head specs pointed at the run's own copies; the run's plugin imported.

    Code a run names runs only when trusted (``require_trust``).
    """
    require_trust(Path(run_dir), model_spec, head_spec, plugin)
    if plugin:
        # The copied plugin registers its backbone names again in this process.
        load_module(resolve_run_spec(plugin, Path(run_dir)))
    return resolve_run_spec(model_spec, Path(run_dir)), resolve_run_spec(head_spec, Path(run_dir))


def activate_run_code(run_dir: Path, run: dict) -> None:
    """``resolve_run_code`` for a run.json dict, in place."""
    model = run["model"]
    model["name"], model["head"] = resolve_run_code(run_dir, model["name"], model["head"], model.get("plugin"))
    run["backbone"]["name"] = model["name"]
