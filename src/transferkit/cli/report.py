"""``transferkit report``."""
from transferkit.runs.report import write_report


def run(args) -> int:
    print(f"report: {write_report(args.run_dir, args.out)}")
    return 0
