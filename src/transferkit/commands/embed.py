from transferkit.commands import add_command
from transferkit.errors import UserError


def register(sub):
    p = add_command(sub, "embed", "write the features each image gives the classifier, with labels and paths "
                    "(.npz, or .parquet with pyarrow)",
                    "transferkit embed runs/pets path/to/images --out pets.npz\n"
                    "  transferkit embed --model efficientnet_lite0 digits --out digits.npz")
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|DATA", help="a run directory and a data SPEC, or only DATA with --model")
    p.add_argument("--model", help="embed with this pretrained backbone instead of a run")
    p.add_argument("--out", required=True, help="output .npz or .parquet file")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.distributed import is_main
    from transferkit.embed import embed
    from transferkit.progress import make_progress

    if args.model:
        if len(args.inputs) != 1:
            raise UserError("with --model give exactly one DATA spec")
        source, data, from_run = args.model, args.inputs[0], False
    else:
        if len(args.inputs) != 2:
            raise UserError("give RUN_DIR and DATA (or --model NAME and DATA)")
        (source, data), from_run = args.inputs, True
    result = embed(source, data, args.out, from_run, args.device, progress=make_progress(args.quiet))
    if not is_main():  # under torchrun rank 0 writes and prints
        return 0
    print(f"wrote {result['n']:,} embeddings of dimension {result['dim']} to {result['out']}")
    return 0
