from transferkit.commands import add_command


def register(sub):
    p = add_command(sub, "serve", "serve the run's model over HTTP: POST /predict, a web page at /, /metadata, /healthz",
                    "transferkit serve runs/pets --port 8000\n"
                    "  curl -F file=@photo.jpg 'http://127.0.0.1:8000/predict?topk=3'")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=("torch", "onnx", "torchscript"), default="torch",
                   help="torch: the run's weights; onnx/torchscript: the file `transferkit export` wrote")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own copy of the model")
    p.add_argument("--max-bytes", default="10MB", help="largest request body (default 10MB); bigger ones get 413")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="largest image, in pixels, read from its header before decoding (default 50 million); 422")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a request may take, upload included (504)")
    p.add_argument("--max-batch", type=int, default=16, help="most requests answered by one forward pass")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its forward pass (default 5 ms)")
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.errors import UserError
    from transferkit.serve import ServeSettings, parse_size, serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port number (0-65535)")
    for flag, value, low in (("--workers", args.workers, 1), ("--max-batch", args.max_batch, 1),
                             ("--max-pixels", args.max_pixels, 1), ("--timeout", args.timeout, 0.001),
                             ("--batch-wait-ms", args.batch_wait_ms, 0)):
        if value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    import importlib.util

    # python-multipart installs as `python_multipart` (older releases: `multipart`).
    missing = [name for name, modules in (("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                          ("python-multipart", ["python_multipart", "multipart"]))
               if not any(importlib.util.find_spec(m) for m in modules)]
    if missing:
        raise UserError(f"serve needs {', '.join(missing)}: `pip install 'transferkit[serve]'`")
    settings = ServeSettings(max_bytes=parse_size(args.max_bytes), max_pixels=args.max_pixels, timeout=args.timeout,
                             max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms)
    serve(args.run_dir, args.host, args.port, args.backend, args.workers, settings)
    return 0
