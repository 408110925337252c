"""``transferkit embed``."""
from transferkit.core.distributed import is_main
from transferkit.core.errors import UserError
from transferkit.core.progress import make_progress
from transferkit.deploy.embed import embed


def run(args) -> int:
    if args.weights and not args.model:
        raise UserError("--weights goes with --model NAME; a run directory brings its own weights")
    if args.model:
        if len(args.inputs) != 1:
            raise UserError("with --model give exactly one DATA spec")
        source, data, from_run = args.model, args.inputs[0], False
    else:
        if len(args.inputs) != 2:
            raise UserError("give RUN_DIR and DATA (or --model NAME and DATA)")
        (source, data), from_run = args.inputs, True
    result = embed(source, data, args.out, from_run, args.device, progress=make_progress(args.quiet), seed=args.seed,
                   skip_bad=args.skip_bad, weights=args.weights or "imagenet", backend=args.backend,
                   precision=args.precision, threads=args.threads, cache_dir=args.cache_dir,
                   allow_outside_paths=args.allow_outside_paths, decode_workers=args.decode_workers)
    if not is_main():  # under torchrun rank 0 writes and prints
        return 0
    print(f"wrote {result['n']:,} embeddings of dimension {result['dim']} to {result['out']}")
    return 0
