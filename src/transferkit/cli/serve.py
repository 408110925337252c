"""``transferkit serve``."""
import importlib.util

from transferkit.core.errors import UserError
from transferkit.data.tta import parse_tta
from transferkit.deploy.serve import ServeSettings, parse_size, serve


def run(args) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port number (0-65535)")
    for flag, value, low in (("--workers", args.workers, 1), ("--max-batch", args.max_batch, 1),
                             ("--max-pixels", args.max_pixels, 1), ("--timeout", args.timeout, 0.001),
                             ("--batch-wait-ms", args.batch_wait_ms, 0), ("--max-decodes", args.max_decodes, 0)):
        if value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    # python-multipart installs as `python_multipart` (older releases: `multipart`).
    missing = [name for name, modules in (("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                          ("python-multipart", ["python_multipart", "multipart"]))
               if not any(importlib.util.find_spec(m) for m in modules)]
    if missing:
        raise UserError(f"serve needs {', '.join(missing)}: `pip install 'transferkit[serve]'`")
    settings = ServeSettings(max_bytes=parse_size(args.max_bytes), max_pixels=args.max_pixels, timeout=args.timeout,
                             max_batch=args.max_batch, max_wait_ms=args.batch_wait_ms, max_decodes=args.max_decodes)
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (every core) or more, got {args.threads}")
    tta = parse_tta(args.tta)  # a mistake stops before the model loads
    serve(args.run_dir, args.host, args.port, args.backend, args.workers, settings, args.precision, args.threads, tta)
    return 0
