import json

from transferkit.commands import TRUSTED_RUN, add_command


def register(sub):
    p = add_command(sub, "eval", "score a run on the test split of its data (val when it has none), or on --data",
                    "transferkit eval runs/pets --split test --format json")
    p.add_argument("run_dir", help=TRUSTED_RUN)
    p.add_argument("--data", help="another data SPEC whose class names are among the run's")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", metavar="OUT.html",
                   help="also write the run's report, scored on this data and split, to OUT.html")
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.distributed import is_main
    from transferkit.errors import UserError
    from transferkit.evaluate import evaluate_run, format_table, outputs_path
    from transferkit.progress import make_progress

    if args.report and not args.report.lower().endswith((".html", ".htm")):
        raise UserError(f"--report must name an .html file, got '{args.report}'")
    result = evaluate_run(args.run_dir, args.data, args.split, args.device, progress=make_progress(args.quiet))
    if not is_main():  # under torchrun rank 0 prints and writes
        return 0
    print(json.dumps(result, indent=2) if args.format == "json" else format_table(result))
    if args.report:
        from transferkit.report import write_report

        path = write_report(args.run_dir, args.report, outputs_path(args.run_dir, args.split))
        if args.format != "json":  # keep --format json output parseable
            print(f"report: {path}")
    return 0
