from transferkit.commands import add_command


def register(sub):
    p = add_command(sub, "export", "write the run's model as ONNX or TorchScript (checked against PyTorch) into the run dir",
                    "transferkit export runs/pets --format onnx\n"
                    "  transferkit predict runs/pets --backend onnx photo.jpg   # use it")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx -> RUN_DIR/model.onnx, torchscript -> RUN_DIR/model.torchscript (default onnx)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default 17)")
    p.add_argument("--samples", type=int, default=8, help="images used for the parity check (default 8)")
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.errors import UserError
    from transferkit.export import DEFAULT_OPSET, export_run

    if args.opset is not None and args.format != "onnx":
        raise UserError("--opset only applies to --format onnx")
    if args.samples < 2:
        raise UserError("--samples must be at least 2")
    result = export_run(args.run_dir, args.format, args.opset or DEFAULT_OPSET, args.samples)
    print(f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB) and {result['sidecar'].name}")
    print(f"parity with PyTorch on {result['inputs']}: max abs logit difference {result['max_abs_diff']:.2e} (ok)")
    return 0
