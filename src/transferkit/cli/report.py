"""``transferkit report``."""
from transferkit.runs.hubfolder import write_model_folder
from transferkit.runs.report import write_report


def run(args) -> int:
    print(f"report: {write_report(args.run_dir, args.out)}")
    if not args.out:  # --out writes the page elsewhere and leaves the run directory as it is
        for path in write_model_folder(args.run_dir):
            print(f"model folder: {path}")
    return 0
