"""``transferkit rank``: backbones and input sizes scored on a sample of the data, best first."""
import json

from transferkit.core.config import TrainConfig
from transferkit.core.progress import log, make_progress
from transferkit.data.specs import load_data
from transferkit.plan.budget import parse_duration
from transferkit.plan.rank import DEFAULT_SIZES, candidates_for, offline_models, parse_list, rank


def run(args) -> int:
    cfg = TrainConfig(data=args.data, seed=args.seed, cache_dir=args.cache_dir or "", backend=args.backend,
                      precision=args.precision, threads=args.threads, skip_bad=args.skip_bad,
                      quiet=args.quiet).validate()
    models = parse_list(args.models) or offline_models()
    sizes = parse_list(args.sizes, int) or list(DEFAULT_SIZES)
    limit = parse_duration(args.budget) if args.budget else None
    splits = load_data(cfg.data, cfg.seed)
    sample = 0 if str(args.sample) == "all" else int(args.sample)
    result = rank(cfg, splits, candidates_for(models, sizes), sample=sample, time_limit=limit, robust=args.robust,
                  progress=None if args.quiet else make_progress(False))
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=2))
        return 0
    how = "cross-validated on training images" if result.mode == "cv" else "fitted on train, scored on the data's val split"
    log(f"rank: {len(result.rows)} candidates on {result.sample:,} images ({how}) in {result.seconds:.0f} s")
    shifted = f"{'shifted':>9}" if args.robust else ""
    print(f"{'#':>2}  {'model':<20}{'size':>5}  {'head':<10}{'expected':>9}{'linear':>8}{'knn':>8}{'proto':>8}{shifted}"
          f"{'LogME':>8}{'img/s':>8}  one-pass heads: held-out accuracy on the sample")
    for i, r in enumerate(result.rows, 1):
        knn = next(v for h, v in r.heads.items() if h.startswith("knn"))
        robust = f"{r.robust.get(r.head, float('nan')):>9.2%}" if args.robust else ""
        print(f"{i:>2}  {r.model:<20}{r.size:>5}  {r.head:<10}{r.expected:>9.2%}{r.heads['linear']:>8.2%}{knn:>8.2%}"
              f"{r.heads['prototype']:>8.2%}{robust}{r.logme:>8.3f}{r.engine_rate:>8.0f}")
    for name, why in result.skipped:
        print(f"skipped {name}: {why}")
    best = result.rows[0]
    print(f"best: transferkit train --data {cfg.data} --model {best.model} --image-size {best.size} --head {best.head}")
    return 0
