"""Which engine runs a frozen network: the fastest installed one that matches PyTorch on the user's images.

``choose`` converts the network once (ONNX, cached), builds each candidate engine from the file,
runs it on a real batch of the user's images next to PyTorch and keeps it only when

    max |engine - torch| <= 1e-4 x max(1, max |torch|)

(fp32 kernels differ in summation order: 1e-5 to 1e-4 absolute on feature maps whose values
reach ~50, so the bound scales with the outputs; for logits below 1 it is 1e-4 absolute). Of
those that pass, the fastest on that batch wins; PyTorch is always a candidate, so a failed
conversion or a mismatch falls back to it, and the one log line says why.

``--precision bf16|int8`` then builds the reduced engine and keeps it only if, on the validation
split, its top-1 predictions agree with fp32 on at least 99% of the images and accuracy drops by
at most 0.5 points (``guard.py``); otherwise it is refused with the numbers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from transferkit.core import devices
from transferkit.core import distributed as dist
from transferkit.core.errors import UserError
from transferkit.core.progress import log
from transferkit.runtimes import reduced
from transferkit.runtimes.convert import export_onnx, network_key
from transferkit.runtimes.engines import (
    NAMES,
    Engine,
    OnnxRuntimeEngine,
    OpenVinoEngine,
    TorchEngine,
    all_cores,
    installed,
)
from transferkit.runtimes.guard import Guard, judge
from transferkit.runtimes.store import Entry

BACKENDS = ("auto", *NAMES)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # fp16: autocast on a GPU only (engine/optim.device_precision)
TOLERANCE = 1e-4
SMALL_JOB = 64          # images: converting costs more than it saves below this, so auto keeps torch
SAMPLE = 32             # images of the parity check and the timing (one real batch)


def engine_device(spec: str, backend: str, precision: str) -> str:
    """The ``--device`` of a command that takes ``--backend``/``--precision``. onnxruntime, OpenVINO
    and exported files are CPU engines, and int8 is theirs: with one of them ``--device auto`` is
    the CPU even where a GPU is free (said in one line), and naming a GPU is a mistake."""
    if backend in ("auto", "torch") and precision != "int8":
        return spec
    asked = f"--backend {backend}" if backend not in ("auto", "torch") else f"--precision {precision}"
    if spec == "auto":
        if devices.cuda_available():
            log(f"{asked} runs on the CPU's engines: so does this command (--device auto; a GPU would run "
                "--backend torch with --precision fp32, bf16 or fp16)")
        return "cpu"
    if spec.startswith("cuda"):
        raise UserError(f"{asked} runs on the CPU (onnxruntime, OpenVINO and exported files are CPU engines), not "
                        f"on --device {spec}: drop --device, or use --backend torch with --precision fp32, bf16 or fp16 "
                        "on the GPU")
    return spec


def stays_in_torch(device: torch.device, backend: str, precision: str) -> bool:
    """Whether a frozen forward pass runs in torch instead of a CPU engine: on a GPU (in fp32, or
    bf16|fp16 under autocast), and under torchrun's several CPU processes with ``--backend auto``
    (an engine per process would compete for the same cores; a named ``--backend`` still gets one).
    ``precision`` is what ``engine/optim.device_precision`` made of ``--precision`` (never auto).
    Asking there for a CPU engine or its int8 is a mistake, said in one line."""
    if device.type == "cpu" and not (dist.world() > 1 and backend == "auto"):
        return False
    on_gpu = device.type != "cpu"
    if backend not in ("auto", "torch") or precision not in (("fp32", "bf16", "fp16") if on_gpu else ("fp32",)):
        where, advice = (("on a GPU", "use --device cpu, or --backend auto --precision fp32|bf16|fp16") if on_gpu
                         else ("under torchrun", "name an engine with --backend, or use --backend auto --precision fp32"))
        raise UserError(f"--backend {backend} --precision {precision} are for the CPU's engines; {where} the "
                        f"frozen part runs in torch: {advice}")
    return True


def in_torch(module: nn.Module, precision: str) -> nn.Module:
    """A network that stays in torch (``stays_in_torch``), run in ``precision``: itself in fp32,
    else under autocast (bf16|fp16 on a GPU) with float32 outputs."""
    return module if precision == "fp32" else TorchEngine(module, precision)


@dataclass
class Frozen:
    """A network that does not change while it runs: what to convert, and what to call it."""

    module: nn.Module       # eval mode, on the CPU
    size: int               # input size in pixels
    what: str               # "frozen front", "classifier", "embedder": for the log line
    key_parts: dict = field(default_factory=dict)  # what else the conversion depends on (user code)


@dataclass
class Settings:
    backend: str = "auto"
    precision: str = "fp32"
    threads: int = 0        # 0: every core this process may use
    mode: str = "batch"     # batch (throughput) | latency (a server)
    root: Path | None = None  # the cache folder (its engines/ part holds the converted files)
    images: int | None = None  # how many images the job will run, when known (None: a long job)


@dataclass
class Choice:
    engine: Engine
    message: str
    report: dict            # parity, speeds, guard numbers: for tests and the benchmark


def validate(backend: str, precision: str, threads: int = 0) -> None:
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if threads < 0:
        raise UserError(f"--threads must be 0 (every core) or more, got {threads}")


def build_engine(name: str, source, precision: str, settings: Settings, entry: Entry | None) -> Engine:
    """One engine: ``source`` is the torch module for torch, else the ONNX or IR file to run."""
    if name == "torch":
        return TorchEngine(source, precision, settings.threads)
    if name == "onnxruntime":
        return OnnxRuntimeEngine(source, precision, settings.threads or all_cores())
    return OpenVinoEngine(source, precision, settings.threads or all_cores(), settings.mode,
                          entry.subfolder("openvino-blobs") if entry else None)


def max_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        return float("inf")
    return float((got.float() - want.float()).abs().max()) if want.numel() else 0.0


def limit(reference: torch.Tensor) -> float:
    return TOLERANCE * max(1.0, float(reference.abs().max()) if reference.numel() else 1.0)


def _run(engine, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = engine(x)
    return out, time.perf_counter() - start


def choose(frozen: Frozen, sample: torch.Tensor, settings: Settings, guard: Guard | None = None,
           source: str = "") -> Choice:
    """The engine for ``frozen``, checked on ``sample`` (a real, preprocessed batch) and timed."""
    validate(settings.backend, settings.precision, settings.threads)
    if settings.precision == "fp16":
        raise UserError("--precision fp16 is autocast on a CUDA GPU; the CPU's engines run fp32, bf16 or int8")
    sample = sample[:SAMPLE].float().contiguous()
    where = source or f"{len(sample)} images"
    torch_engine = build_engine("torch", frozen.module, "fp32", settings, None)
    reference, seconds = _run(torch_engine, sample) if len(sample) else (torch.zeros(0), 0.0)
    if settings.backend != "torch" and not (settings.images is not None and settings.images < SMALL_JOB) and len(sample):
        seconds = _run(torch_engine, sample)[1]  # timed warm, as every other engine is
    speeds, notes, diffs = {"torch": len(sample) / max(seconds, 1e-9)}, [], {}
    bound = limit(reference)
    candidates = [settings.backend] if settings.backend != "auto" else [n for n in NAMES if n != "torch"]
    if settings.backend == "torch":
        candidates = []
    elif len(sample) == 0:
        if settings.backend != "auto":
            raise UserError(f"--backend {settings.backend}: no readable image to check it against torch on")
        candidates, notes = [], ["no readable image to check another engine on"]
    elif settings.backend == "auto" and settings.precision == "fp32" and settings.images is not None \
            and settings.images < SMALL_JOB:
        candidates, notes = [], [f"{settings.images} images: converting would cost more than it saves"]
    engines, entry, onnx = {"torch": torch_engine}, None, None
    missing = [n for n in candidates if not installed(n)]
    for name in missing:
        if settings.backend == name:
            raise UserError(f"--backend {name} needs the {name} package: pip install {name}")
        notes.append(f"{name} not installed")
    candidates = [n for n in candidates if n not in missing]
    if candidates:
        entry = Entry(settings.root or Path("."), network_key(frozen.module, frozen.size, frozen.key_parts),
                      about=f"{frozen.what} converted for onnxruntime and OpenVINO ({frozen.size} px)")
        try:
            onnx, _made = entry.file("model.onnx", lambda p: export_onnx(frozen.module, frozen.size, p))
        except Exception as exc:  # an architecture the exporter cannot follow: torch runs it
            why = _first_line(exc)
            if settings.backend != "auto":
                raise UserError(f"--backend {settings.backend}: cannot convert the {frozen.what} to ONNX ({why}); "
                                "use --backend torch") from None
            candidates, notes = [], notes + [f"not convertible to ONNX ({why})"]
    for name in candidates:
        try:
            engine = build_engine(name, onnx, "fp32", settings, entry)
            got, _ = _run(engine, sample)  # also the warm-up before timing
        except Exception as exc:  # a runtime that cannot run the file: say so, keep the others
            failed = f"{name} failed ({_first_line(exc)})"
            if settings.backend == name:
                raise UserError(f"--backend {name}: {failed}; use --backend torch or auto") from None
            notes.append(failed)
            continue
        diffs[name] = max_diff(got, reference)
        if not diffs[name] <= bound:  # also catches NaN
            mismatch = f"{name} differs from torch by {diffs[name]:.3g} (limit {bound:.3g})"
            if settings.backend == name:
                raise UserError(f"--backend {name}: {mismatch} on {where}; use --backend torch or auto")
            notes.append(mismatch)
            continue
        engines[name] = engine
    for name, engine in engines.items():  # one timed run each, after the warm-up above
        if name != "torch":
            speeds[name] = _rate(engine, sample)
    if settings.backend == "auto":
        best = max(engines, key=lambda n: speeds[n])
    else:
        best = settings.backend
    fp32 = engines[best]
    report = {"engine": best, "precision": "fp32", "speeds": speeds, "diffs": diffs, "limit": bound,
              "notes": notes, "sample": len(sample), "onnx": str(onnx) if onnx else None}
    others = ", ".join(f"{n} {speeds[n]:.0f}" for n in engines if n != best)
    checked = f"; matches torch within {diffs[best]:.1e} (limit {bound:.1e}) on {where}" if best in diffs else ""
    message = (f"engine for the {frozen.what}: {best} fp32 at {speeds[best]:.0f} img/s"
               + (f" (also timed: {others} img/s)" if others else "") + checked
               + (f"; {'; '.join(notes)}" if notes else ""))
    if settings.precision == "fp32":
        return Choice(fp32, message, report)
    return _reduced(frozen, fp32, onnx, entry, settings, guard, report, message)


def _reduced(frozen, fp32, onnx, entry, settings: Settings, guard: Guard | None, report: dict, fp32_message: str) -> Choice:
    """The bf16/int8 engine if the guard passes; else fp32 (``guard.strict`` False) or a UserError."""
    precision = settings.precision
    strict = guard is None or guard.strict

    def refuse(why: str) -> Choice:
        text = f"--precision {precision} refused: {why}"
        if strict:
            raise UserError(text + "; use --precision fp32")
        report.update(refused=why)
        return Choice(fp32, f"{fp32_message}; {text}, so the {frozen.what} runs in fp32", report)

    if guard is None:
        return refuse("no labelled validation images to check it on (a run's data, or a data set with a val split)")
    names = _reduced_engine_names(precision, settings.backend)
    if isinstance(names, tuple):
        return refuse(names[1])
    built, failures = [], []
    for name in names:
        engine = build_reduced(frozen, precision, settings, onnx, entry, guard.calibration, name)
        (failures if isinstance(engine, str) else built).append(engine)
    if not built:
        return refuse("; ".join(failures))
    # int8 under --backend auto: both quantizers' engines, timed on the same batch, fastest first
    # (onnxruntime's int8 beat OpenVINO's on an AMD Zen 4; OpenVINO's wins where it has AMX).
    x = guard.sample()
    speeds = {engine.name: speed(engine, x) for engine in built}
    built.sort(key=lambda e: -speeds[e.name])
    verdicts = []
    for engine in built:
        verdicts.append(judge(fp32, engine, guard))
        if verdicts[-1]["ok"]:
            break
    verdict = verdicts[-1]
    report.update(guard=verdict, reduced_speeds=speeds)
    if not verdict["ok"]:
        return refuse(verdict["text"] if len(built) == 1 else
                      "; ".join(f"{e.name}: {v['text']}" for e, v in zip(built, verdicts)))
    name = engine.name
    report.update(engine=name, precision=precision, reduced_speed=speeds[name])
    others = ", ".join(f"{other} {precision} {rate:.0f}" for other, rate in speeds.items() if other != name)
    others = f"; also timed: {others} img/s" if others else ""
    failed = "".join(f"; {e.name} {precision} failed the guard ({v['text']})" for e, v in zip(built, verdicts[:-1]))
    failed += "".join(f"; {why}" for why in failures)
    message = (f"engine for the {frozen.what}: {name} {precision} at {speeds[name]:.0f} img/s "
               f"(fp32: {fp32.name} {report['speeds'][fp32.name]:.0f} img/s{others}); "
               f"accuracy guard passed: {verdict['text']}{failed}")
    return Choice(engine, message, report)


def speed(engine, x: torch.Tensor) -> float:
    """images/s of ``engine`` on ``x``, one timed run after a warm-up."""
    _run(engine, x)
    return _rate(engine, x)


def _rate(engine, x: torch.Tensor) -> float:
    """images/s of one timed run of an engine already warmed up on ``x``."""
    return len(x) / max(_run(engine, x)[1], 1e-9)


def build_reduced(frozen: Frozen, precision: str, settings: Settings, onnx: Path | None, entry: Entry | None,
                  calibration: Callable[[], torch.Tensor], name: str | None = None) -> Engine | str:
    """The bf16/int8 engine ``name`` (default: the first of ``_reduced_engine_names``), not yet
    judged, or why there is none. ``calibration()``: int8's images."""
    if name is None:
        names = _reduced_engine_names(precision, settings.backend)
        if isinstance(names, tuple):
            return names[1]
        name = names[0]
    try:
        if name == "torch":
            return build_engine("torch", frozen.module, precision, settings, None)
        if onnx is None or entry is None:
            return f"the {frozen.what} could not be converted to ONNX"
        if precision == "bf16":
            return build_engine(name, onnx, "bf16", settings, entry)
        return build_engine(name, _int8_file(name, onnx, entry, calibration), "int8", settings, entry)
    except UserError:
        raise
    except Exception as exc:  # quantization or compilation failed on this network
        return f"{name} could not build it ({_first_line(exc)})"


def _reduced_engine_names(precision: str, backend: str) -> list[str] | tuple:
    """The engines that run ``precision`` here (int8 under auto: every installed quantizer's, to be
    timed), or ``(None, why not)``."""
    if precision == "bf16":
        has = reduced.bf16_support()
        if backend == "onnxruntime":
            return None, "onnxruntime's CPU provider has no bf16 kernels (use --backend openvino or auto)"
        if backend in ("torch", "openvino"):
            return [backend] if has[backend] else (None, f"{backend} has no bf16 kernels for this CPU")
        fast = next((n for n in ("openvino", "torch") if has[n]), None)
        return [fast] if fast else (None, "this CPU has no bf16 instructions (avx512_bf16 or AMX)")
    if backend == "torch":
        return None, "int8 runs on openvino or onnxruntime (use --backend auto)"
    if backend == "openvino" and "openvino" not in reduced.int8_engines():
        return None, "int8 on openvino needs NNCF: pip install 'transferkit[int8]'"
    if backend != "auto":
        return [backend]
    engines = reduced.int8_engines()
    return engines or (None, "neither NNCF nor onnxruntime is installed")


def _int8_file(name: str, onnx: Path, entry: Entry, calibration: Callable[[], torch.Tensor]) -> Path:
    images = calibration().numpy()
    tag = reduced.calibration_key(images)
    if name == "openvino":
        return entry.file(f"int8-{tag}.xml", lambda p: reduced.quantize_openvino(onnx, images, p),
                          companions=(f"int8-{tag}.bin",))[0]
    return entry.file(f"int8-{tag}.onnx", lambda p: reduced.quantize_onnxruntime(onnx, images, p))[0]


def _first_line(exc: Exception) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {text[:200]}"


class Lazy(nn.Module):
    """An engine chosen on first use: a feature cache that is reused never converts anything."""

    def __init__(self, make: Callable[[], Choice], announce: Callable[[str], None]):
        super().__init__()
        self.make, self.announce, self.choice = make, announce, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.choice is None:
            self.choice = self.make()
            self.announce(self.choice.message)
        return self.choice.engine(x)


__all__ = ["BACKENDS", "PRECISIONS", "Choice", "Frozen", "Guard", "Lazy", "Settings", "build_reduced", "choose", "validate"]
