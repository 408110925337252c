"""``transferkit data check`` (``--deep``: and ``data audit``)."""
import json

from transferkit.cli.audit import audit
from transferkit.data.check import check_data, format_report


def run(args) -> int:
    report = check_data(args.spec, max_pixels=args.max_pixels)
    if not args.deep:
        print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
        return 0 if report["clean"] else 1
    found, text, leakage = audit(args)
    print(json.dumps({"check": report, "audit": found}, indent=2) if args.format == "json"
          else format_report(report) + "\n" + text)
    return 0 if report["clean"] and not leakage else 1
