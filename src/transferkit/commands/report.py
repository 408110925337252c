from transferkit.commands import add_command


def register(sub):
    p = add_command(sub, "report", "(re)write a run's report.html: curves, confusion matrix, per-class scores, worst "
                    "errors, calibration and settings, in one self-contained page",
                    "transferkit report runs/pets            # writes runs/pets/report.html")
    p.add_argument("run_dir")
    p.add_argument("--out", metavar="FILE.html", help="write here instead of RUN_DIR/report.html")
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.report import write_report

    print(f"report: {write_report(args.run_dir, args.out)}")
    return 0
