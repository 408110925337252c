"""``transferkit eval`` (and ``eval --corrupt``, the ImageNet-C shift test)."""
import json

from transferkit.core.distributed import is_main
from transferkit.core.errors import UserError
from transferkit.core.progress import make_progress
from transferkit.runs import shift
from transferkit.runs.evaluate import evaluate_run, format_table, outputs_path
from transferkit.runs.report import write_report


def run(args) -> int:
    if args.report and not args.report.lower().endswith((".html", ".htm")):
        raise UserError(f"--report must name an .html file, got '{args.report}'")
    if args.corrupt is None and (args.corruptions or args.corrupt_limit):
        raise UserError("--corruptions and --corrupt-limit go with --corrupt (e.g. --corrupt 3 --corrupt-limit 1000)")
    if args.corrupt is not None:
        return _corrupt(args)
    result = evaluate_run(args.run_dir, args.data, args.split, args.device, progress=make_progress(args.quiet),
                          skip_bad=args.skip_bad, tta=args.tta, cache_dir=args.cache_dir, backend=args.backend,
                          precision=args.precision, threads=args.threads,
                          allow_outside_paths=args.allow_outside_paths, decode_workers=args.decode_workers)
    if not is_main():  # under torchrun rank 0 prints and writes
        return 0
    print(json.dumps(result, indent=2) if args.format == "json" else format_table(result))
    if args.report:
        path = write_report(args.run_dir, args.report, outputs_path(args.run_dir, args.split))
        if args.format != "json":  # keep --format json output parseable
            print(f"report: {path}")
    return 0


def _corrupt(args) -> int:
    """Clean and corrupted scores; the run's report.html (or --report) gains the section."""
    if args.tta not in (None, "", "none"):
        raise UserError("--corrupt scores single views: drop --tta (or run eval --tta on its own)")
    result = shift.corruption_eval(args.run_dir, args.corrupt, args.corruptions, args.corrupt_limit, data=args.data,
                                   split=args.split, device=args.device, progress=make_progress(args.quiet),
                                   skip_bad=args.skip_bad, cache_dir=args.cache_dir, backend=args.backend,
                                   precision=args.precision, threads=args.threads)
    if not is_main():
        return 0
    print(json.dumps(result, indent=2) if args.format == "json" else shift.format_table(result))
    path = write_report(args.run_dir, args.report)
    if args.format != "json":
        print(f"report: {path}")
    return 0
