import json

from transferkit.commands import add_command


def register(sub):
    p = add_command(sub, "eval", "score a run on the test split of its data (val when it has none), or on --data",
                    "transferkit eval runs/pets --split test --format json")
    p.add_argument("run_dir")
    p.add_argument("--data", help="another data SPEC whose class names are among the run's")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.evaluate import evaluate_run, format_table
    from transferkit.progress import make_progress

    result = evaluate_run(args.run_dir, args.data, args.split, args.device, progress=make_progress(args.quiet))
    print(json.dumps(result, indent=2) if args.format == "json" else format_table(result))
    return 0
