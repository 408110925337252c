"""``transferkit data check``."""
import json

from transferkit.data.check import check_data, format_report


def run(args) -> int:
    report = check_data(args.spec, max_pixels=args.max_pixels, allow_outside_paths=args.allow_outside_paths,
                        workers=args.decode_workers)
    print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
    return 0 if report["clean"] else 1
