"""``transferkit data check`` (``--deep``: and the audit) and ``transferkit data audit``."""
from __future__ import annotations

import json
from pathlib import Path

from transferkit.audit.audit import run_audit
from transferkit.audit.duplicates import MARGIN, THRESHOLD
from transferkit.audit.outputs import format_table, to_json, write_files
from transferkit.audit.page import render
from transferkit.core.config import TrainConfig
from transferkit.core.devices import pick_device
from transferkit.core.errors import UserError
from transferkit.core.progress import make_progress
from transferkit.data.check import check_data, format_report
from transferkit.data.specs import load_data
from transferkit.runs.rundir import read_run

FROM_RUN = ("data", "model", "weights", "image_size", "seed", "cache_dir", "max_pixels")


def settings(args) -> TrainConfig:
    """The audit's TrainConfig: a run directory's own settings (SPEC), else the defaults; flags win."""
    values = {}
    if (Path(args.spec) / "run.json").is_file():
        saved = read_run(args.spec)["config"]
        values = {k: saved[k] for k in FROM_RUN if saved.get(k) is not None}
    else:
        values["data"] = args.spec
    flags = {"model": args.model, "weights": args.weights, "image_size": args.image_size, "seed": args.seed,
             "cache_dir": args.cache_dir, "max_pixels": args.max_pixels, "backend": args.backend,
             "precision": args.precision, "threads": args.threads, "device": args.device, "quiet": args.quiet}
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig(**values, skip_bad=args.skip_bad or values.get("skip_bad", False)).validate()


def audit(args) -> tuple[dict, str, bool]:
    """Run the audit and write its files: ``(json, printed summary, leakage found)``."""
    cfg = settings(args)
    if args.threshold is not None and not 0 < args.threshold <= 1:
        raise UserError(f"--threshold {args.threshold}: a cosine similarity in (0, 1]")
    if args.margin is not None and not 0 <= args.margin < 1:
        raise UserError(f"--margin {args.margin}: a similarity difference in [0, 1)")
    result = run_audit(cfg, load_data(cfg.data, cfg.seed), pick_device(cfg.device), make_progress(cfg.quiet),
                       args.threshold or THRESHOLD, MARGIN if args.margin is None else args.margin)
    files = write_files(result, Path(args.out or "audit"), render(result))
    return to_json(result), format_table(result, files), result.leakage


def run(args) -> int:
    if args.data_command == "audit":
        found, text, leakage = audit(args)
        print(json.dumps(found, indent=2) if args.format == "json" else text)
        return 1 if leakage else 0
    report = check_data(args.spec, max_pixels=args.max_pixels, allow_outside_paths=args.allow_outside_paths,
                        workers=args.decode_workers)
    if not args.deep:
        print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
        return 0 if report["clean"] else 1
    found, text, leakage = audit(args)
    print(json.dumps({"check": report, "audit": found}, indent=2) if args.format == "json"
          else format_report(report) + "\n" + text)
    return 0 if report["clean"] and not leakage else 1
