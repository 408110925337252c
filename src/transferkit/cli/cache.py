"""``transferkit cache list|clear``: what the cache folder holds, and emptying it safely."""
import json

from transferkit.core.cachedir import KINDS, cache_root, clear_entries, list_entries


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def run(args) -> int:
    root = cache_root(args.cache_dir)
    kinds = KINDS if args.kind == "all" else (args.kind,)
    if args.cache_command == "clear":
        removed, freed, busy = clear_entries(root, kinds)
        print(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'} ({_size(freed)}) from {root}")
        for folder in busy:
            print(f"skipped {folder}: a running process is building it")
        return 0
    entries = list_entries(root, kinds)
    if args.format == "json":
        print(json.dumps({"root": str(root), "entries": entries,
                          "bytes": {k: sum(e["bytes"] for e in entries if e["kind"] == k) for k in kinds}}, indent=2))
        return 0
    print(f"cache folder: {root}")
    for kind in kinds:
        mine = [e for e in entries if e["kind"] == kind]
        print(f"{kind}: {len(mine)} entr{'y' if len(mine) == 1 else 'ies'}, {_size(sum(e['bytes'] for e in mine))}")
        for e in mine:
            state = (e["about"] or "complete") if e["complete"] else "unfinished (being built, or left by a stopped run)"
            print(f"  {e['key']}  {_size(e['bytes']):>9}  {state}")
    return 0
