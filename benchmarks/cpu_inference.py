"""CPU inference engines, all in one run: engine speed per model/backend/precision, the feature-cache
build of 5,000 photos per --backend/--precision, and `serve` requests/s with 16 clients.

    python benchmarks/cpu_inference.py                      # the full benchmark (quiet machine, ~30-60 min)
    python benchmarks/cpu_inference.py --quick              # the same sections at reduced size (checks the script)

1. engines: images/s at 224 px, batch 32, for efficientnet_lite0 (packaged ImageNet weights),
   resnet18 and mobilenet_v3_large (random weights: speed does not depend on them), on
   transferkit's torch path (channels-last fp32, bf16 autocast), onnxruntime (fp32, int8) and
   OpenVINO (fp32, bf16, int8), each built by transferkit's runtimes exactly as the commands
   build them. Engines are timed round-robin (median of --rounds, one warm-up) so that a busy
   neighbour slows all alike. FLOPs per image: torch.utils.flop_counter (2 x multiply-adds of
   convolutions and matrix products); share of peak: achieved GFLOP/s over the CPU's peak
   (cores x FLOP/cycle x clock: 32 FLOP/cycle/core for two 256-bit FMA pipes, --peak-gflops to
   give a measured one; bf16 rows against 2x, int8 rows against 4x that peak).
2. feature cache: `train`'s own path (train.paths.choose_path: the engine's conversion, check,
   timing and accuracy guard included) on N photo-like JPEGs decoded once beforehand, from an
   empty cache, for --backend torch (transferkit's torch path, the baseline), auto, and auto with
   --precision bf16 and int8; EfficientNet-Lite0 with its ImageNet weights, --freeze backbone.
3. serve: benchmarks/serve_load.py against `transferkit serve` of a run trained on those photos,
   16 concurrent clients, --backend torch against auto (and bf16 when its guard passes).

Writes a Markdown summary to stdout and everything measured to --json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODELS = {"efficientnet_lite0": "imagenet", "resnet18": "none", "mobilenet_v3_large": "none"}
ROWS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
        ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]


def peak_gflops(given: float) -> tuple[float, str]:
    if given:
        return given, "given with --peak-gflops"
    from transferkit.runtimes.engines import all_cores

    mhz = 0.0
    try:
        mhz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    except (OSError, ValueError):
        speeds = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
        mhz = max(speeds) if speeds else 2000.0
    cores = all_cores()
    return cores * 32 * mhz / 1000, f"{cores} cores x 32 FLOP/cycle x {mhz / 1000:.2f} GHz (no boost counted)"


def photos(n: int, size: int = 224, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Photo-like images: random crops, scales, flips and colour shifts of the photos shipped with
    scikit-learn (and scikit-image when installed); the class is the source photo."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    sources = list(load_sample_images().images)
    try:
        import skimage.data as sd
        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            sources.append(np.ascontiguousarray(getattr(sd, name)()[..., :3]))
    except Exception:  # noqa: BLE001 - scikit-image is optional
        pass
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for i in range(n):
        k = int(rng.integers(len(sources)))
        src = sources[k]
        h, w = src.shape[:2]
        side = int(rng.uniform(0.35, 0.9) * min(h, w))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(src[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop, dtype=np.float32) * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 4, (size, size, 3))
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        out.append(arr[:, ::-1] if rng.random() < 0.5 else arr)
        labels.append(k)
    return np.stack(out), np.array(labels)


def write_jpegs(root: Path, n: int) -> Path:
    from PIL import Image

    images, labels = photos(n, size=320, seed=1)
    for i, (img, k) in enumerate(zip(images, labels)):
        folder = root / f"photo{k}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def section_engines(args, peak: float) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from transferkit.data.transforms import prepare
    from transferkit.models.outputs import Logits
    from transferkit.models.transfer import create_model
    from transferkit.runtimes.choose import Frozen, Settings, build_reduced, choose
    from transferkit.runtimes.store import Entry

    raw, _labels = photos(args.batch + args.calibration, seed=2)
    rows = []
    for name in args.models:
        tm = create_model(name, 1000 if MODELS[name] == "imagenet" else 10, MODELS[name])
        pre = tm.info.preprocess(224)
        x_all = prepare(torch.from_numpy(raw).permute(0, 3, 1, 2).contiguous(), pre)
        x, calib = x_all[:args.batch], x_all[args.batch:]
        module = Logits(tm.net).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x[:1])
        flops = counter.get_total_flops()
        frozen, engines = Frozen(module, 224, "classifier"), {}
        for backend, precision in args.rows:
            settings = Settings(backend, "fp32", args.threads, "batch", Path(args.cache))
            try:
                # fp32: exactly what the commands build (conversion and parity check included). Reduced
                # precision is built the same way but not judged: random weights say nothing of accuracy.
                fp32 = choose(frozen, x, settings)
                engine = fp32.engine if precision == "fp32" else build_reduced(
                    frozen, precision, replace(settings, precision=precision), fp32.report["onnx"] and
                    Path(fp32.report["onnx"]), fp32.report["onnx"] and Entry(Path(args.cache), Path(fp32.report["onnx"]).parent.name),
                    lambda: calib)
            except Exception as exc:  # noqa: BLE001 - a row that cannot run is reported, not fatal
                engine = f"{type(exc).__name__}: {exc}"
            if isinstance(engine, str):
                rows.append({"model": name, "backend": backend, "precision": precision, "error": engine[:200]})
                continue
            engines[(backend, precision)] = engine
        times = {k: [] for k in engines}
        for k, engine in engines.items():  # warm-up
            with torch.inference_mode():
                engine(x)
        for _ in range(args.rounds):
            for k, engine in engines.items():
                time.sleep(0.1)  # idle worker pools go to sleep, as between real batches
                start = time.perf_counter()
                with torch.inference_mode():
                    engine(x)
                times[k].append(time.perf_counter() - start)
        base = len(x) / statistics.median(times[("torch", "fp32")]) if ("torch", "fp32") in times else None
        for (backend, precision), t in times.items():
            speed = len(x) / statistics.median(t)
            scale = {"fp32": 1, "bf16": 2, "int8": 4}[precision]
            rows.append({"model": name, "backend": backend, "precision": precision, "images_per_s": speed,
                         "vs_torch": speed / base if base else None, "gflops_per_image": flops / 1e9,
                         "share_of_peak": speed * flops / 1e9 / (peak * scale)})
    return rows


def section_cache(args, folder: Path) -> list[dict]:
    from transferkit.core.config import TrainConfig
    from transferkit.core.progress import make_progress
    from transferkit.data.imagesets import decode_splits
    from transferkit.data.specs import load_data
    from transferkit.models.freeze import apply_freeze, plan_freeze
    from transferkit.models.transfer import create_model
    from transferkit.train.paths import choose_path

    splits = load_data(str(folder), 0)
    tm = create_model("efficientnet_lite0", len(splits.classes), "imagenet")
    pre = tm.info.preprocess(224)
    start = time.perf_counter()
    sets = decode_splits({"train": splits.train, "val": splits.val}, pre.size, pre.interpolation, announce=False)
    decode_s = time.perf_counter() - start
    plan = plan_freeze(tm.net, tm.layout, "backbone")
    apply_freeze(tm.net, tm.layout, plan)
    rows = []
    for backend, precision in args.cache_rows:
        with tempfile.TemporaryDirectory() as cache:
            cfg = TrainConfig(data=str(folder), image_size=224, cache_dir=cache, backend=backend, precision=precision,
                              threads=args.threads, quiet=True)
            err = io.StringIO()
            start = time.perf_counter()
            with _stderr_to(err):
                path = choose_path(cfg, tm, plan, sets, pre, torch.device("cpu"), None, make_progress(True))
            seconds = time.perf_counter() - start
        lines = [line for line in err.getvalue().splitlines() if line.startswith("engine for")]
        rows.append({"backend": backend, "precision": precision, "seconds": seconds,
                     "images": sum(len(s) for s in sets.values()), "engine": lines[-1] if lines else "",
                     "cache": path.message})
    base = next((r["seconds"] for r in rows if r["backend"] == "torch"), None)
    for r in rows:
        r["vs_torch"] = base / r["seconds"] if base else None
    return [{"decode_seconds": decode_s}, *rows]


class _stderr_to:
    def __init__(self, buffer):
        self.buffer = buffer

    def __enter__(self):
        self.saved, sys.stderr = sys.stderr, self.buffer

    def __exit__(self, *exc):
        sys.stderr = self.saved


def section_serve(args, folder: Path, work: Path) -> list[dict]:
    run = work / "serve-run"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "XDG_CACHE_HOME": str(work / "xdg")}
    subprocess.run([sys.executable, "-m", "transferkit", "train", "--data", str(folder), "--model", "efficientnet_lite0",
                    "--image-size", "224", "--epochs", "1", "--out", str(run), "--quiet"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    for flags in args.serve_rows:
        out = subprocess.run([sys.executable, str(HERE / "serve_load.py"), "--run", str(run), "-n", str(args.requests),
                              "-c", "16", "--serve-args", flags], capture_output=True, text=True, env=env)
        found = re.search(r"([\d.]+) requests/s", out.stdout)
        rows.append({"serve_args": flags, "requests_per_s": float(found.group(1)) if found else None,
                     "output": out.stdout.strip().splitlines() + out.stderr.strip().splitlines()[-2:]})
    base = rows[0]["requests_per_s"] if rows else None
    for r in rows:
        r["vs_torch"] = r["requests_per_s"] / base if base and r["requests_per_s"] else None
    return rows


def markdown(result: dict) -> str:
    lines = [f"peak: {result['peak_gflops']:.0f} GFLOP/s fp32 ({result['peak_method']})", "",
             "| model | backend | precision | img/s | x torch fp32 | GFLOPs/img | share of peak |", "|---|---|---|---|---|---|---|"]
    for r in result["engines"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | - | - | - | {r['error'][:80]} |")
        else:
            lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['images_per_s']:.1f} | "
                         f"{r['vs_torch'] or 0:.2f} | {r['gflops_per_image']:.3f} | {r['share_of_peak']:.0%} |")
    cache = result["cache"]
    lines += ["", f"feature cache, {cache[1]['images'] if len(cache) > 1 else 0} photos (decoded once: "
              f"{cache[0]['decode_seconds']:.1f} s, not counted)", "", "| --backend | --precision | seconds | x torch | engine line |",
              "|---|---|---|---|---|"]
    for r in cache[1:]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['seconds']:.1f} | {r['vs_torch'] or 0:.2f} | {r['engine'][:160]} |")
    lines += ["", "| serve flags (16 clients) | requests/s | x torch |", "|---|---|---|"]
    for r in result["serve"]:
        lines.append(f"| {r['serve_args']} | {r['requests_per_s'] or 0:.1f} | {r['vs_torch'] or 0:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced size: checks that every section runs")
    parser.add_argument("--photos", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=300, help="int8 calibration images per model")
    parser.add_argument("--threads", type=int, default=0, help="engine threads (default 0: every core)")
    parser.add_argument("--peak-gflops", type=float, default=0.0)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sections", default="engines,cache,serve")
    parser.add_argument("--cache-rows", default="torch:fp32,auto:fp32,auto:bf16,auto:int8",
                        help="the cache section's BACKEND:PRECISION rows (torch:fp32 is the baseline of the ratios)")
    parser.add_argument("--json", default="cpu_inference.json")
    args = parser.parse_args(argv)
    from transferkit.core.cputuning import tune_malloc

    tune_malloc()  # as the transferkit command does: large batches otherwise fault in fresh pages on every op
    if args.quick:
        args.photos, args.requests, args.rounds, args.batch, args.calibration = 200, 60, 2, 8, 16
    args.models = args.models.split(",")
    args.rows = ROWS
    args.cache_rows = [tuple(row.split(":")) for row in args.cache_rows.split(",")]
    args.serve_rows = ["--backend torch", "--backend auto", "--backend auto --precision bf16"]
    peak, method = peak_gflops(args.peak_gflops)
    result = {"peak_gflops": peak, "peak_method": method, "cpu_count": os.cpu_count(), "argv": sys.argv[1:],
              "torch": torch.__version__, "engines": [], "cache": [{"decode_seconds": 0}], "serve": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        args.cache = str(work / "engines-cache")
        sections = args.sections.split(",")
        if "engines" in sections:
            result["engines"] = section_engines(args, peak)
        if "cache" in sections or "serve" in sections:
            folder = write_jpegs(work / "photos", args.photos)
            if "cache" in sections:
                result["cache"] = section_cache(args, folder)
            if "serve" in sections:
                result["serve"] = section_serve(args, folder, work)
    Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
