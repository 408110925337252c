import argparse
import json

from transferkit.commands import Parser, add_command


def register(sub):
    p = add_command(sub, "data", "inspect a data set", "transferkit data check path/to/images")
    data_sub = p.add_subparsers(dest="data_command", metavar="check", parser_class=Parser)
    data_sub.required = True
    c = data_sub.add_parser("check", help="classes, counts, duplicates and unusable files; exit 1 when not clean",
                            description="Scan a data set: classes and counts, class imbalance, duplicate files "
                                        "(by content hash) within and across splits, and every unusable file with "
                                        "the reason. Exit 0 when clean, 1 when not.",
                            epilog="example:\n  transferkit data check path/to/images",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("spec", help="data SPEC (folder, CSV or built-in name)")
    c.add_argument("--format", choices=("table", "json"), default="table")
    c.add_argument("--max-pixels", type=int, default=None, help="images above this many pixels are reported")
    c.set_defaults(run=run)


def run(args) -> int:
    from transferkit.datacheck import check_data, format_report

    report = check_data(args.spec, max_pixels=args.max_pixels)
    print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))
    return 0 if report["clean"] else 1
