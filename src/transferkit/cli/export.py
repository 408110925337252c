"""``transferkit export``."""
from transferkit.core.errors import UserError
from transferkit.deploy.export import DEFAULT_OPSET, export_run


def run(args) -> int:
    if args.opset is not None and args.format != "onnx":
        raise UserError("--opset only applies to --format onnx")
    if args.samples < 2:
        raise UserError("--samples must be at least 2")
    result = export_run(args.run_dir, args.format, args.opset or DEFAULT_OPSET, args.samples, precision=args.precision)
    print(f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB, {args.precision}) and {result['sidecar'].name}")
    if result["guard"]:
        print(f"accuracy guard passed: {result['guard']}")
    else:
        print(f"parity with PyTorch on {result['inputs']}: max abs logit difference {result['max_abs_diff']:.2e} (ok)")
    return 0
