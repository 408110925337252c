"""``transferkit eval``."""
import json

from transferkit.core.distributed import is_main
from transferkit.core.errors import UserError
from transferkit.core.progress import make_progress
from transferkit.runs.evaluate import evaluate_run, format_table, outputs_path
from transferkit.runs.report import write_report


def run(args) -> int:
    if args.report and not args.report.lower().endswith((".html", ".htm")):
        raise UserError(f"--report must name an .html file, got '{args.report}'")
    result = evaluate_run(args.run_dir, args.data, args.split, args.device, progress=make_progress(args.quiet),
                          skip_bad=args.skip_bad, tta=args.tta, cache_dir=args.cache_dir, backend=args.backend,
                          precision=args.precision, threads=args.threads, decode_workers=args.decode_workers)
    if not is_main():  # under torchrun rank 0 prints and writes
        return 0
    print(json.dumps(result, indent=2) if args.format == "json" else format_table(result))
    if args.report:
        path = write_report(args.run_dir, args.report, outputs_path(args.run_dir, args.split))
        if args.format != "json":  # keep --format json output parseable
            print(f"report: {path}")
    return 0
