"""Training settings: one dataclass whose field help texts become ``train --help``.

Precedence: built-in defaults < ``--config FILE.yaml`` < command-line flags. The YAML file uses
the field names below (``batch_size: 64``); unknown keys and wrong types are user errors.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from transferkit.core.deprecated import Renamed, add_renamed_flags, rename_settings
from transferkit.core.errors import UserError


def opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    data: str = opt(None, "data SPEC: a folder (root/<class>/<img> or root/train|val|test/...), a CSV of path,label, "
                          "a .parquet file or folder in the Hugging Face Hub's layout (columns named by "
                          "PATH:image=COL,label=COL when not found), or fashion-mnist | cifar10 | digits | "
                          "animal-shapes | mnist-5k | lfw-faces")
    model: str = opt("efficientnet_lite0", "backbone: a torchvision name (resnet18), timm/NAME, efficientnet_lite0..2, "
                                           "hub:owner/repo:entry, a name registered by a --plugin, or your own "
                                           "path/file.py:Class, built as Class(num_classes=N), its last nn.Linear the "
                                           "classifier (use --weights none or PATH). Your file is copied into the run; "
                                           "loading the run runs it again, only with --trust-code")
    weights: str = opt("imagenet", "imagenet | none | PATH to .safetensors or a weights-only .pth | a weight name: "
                                   "torchvision's DEFAULT, IMAGENET1K_V1, MobileNet_V2_Weights.IMAGENET1K_V1, or a timm "
                                   "tag timm/resnet50.a1_in1k (cached ones are used offline, their hash checked)")
    freeze: str = opt("backbone", "none | backbone (train the head only) | N (freeze the first N stages) | "
                                  "name,name (module prefixes). Frozen parts keep BatchNorm in eval mode: "
                                  "running statistics are used and never updated")
    head: str = opt("linear", "linear | mlp:512[,256][,dropout=0.2][,bn] | prototype (nearest class mean of centred, "
                              "L2-normalised features; no gradient steps) | knn:K (K nearest training images vote) | "
                              "path/file.py:Class, your nn.Module built as Class(in_features, num_classes); copied into "
                              "the run; loading the run runs it again, only with --trust-code")
    recipe: str = opt("standard", "standard | lpft (linear probe, then fine-tune: fit the head to convergence on the "
                                  "frozen features first, then train what --freeze leaves trainable from there; "
                                  "give --freeze N or none and a small --lr)", choices=("standard", "lpft"))
    epochs: int = opt(10, "passes over the training split")
    lr: str = opt("1e-3", "peak learning rate of the head (a float, or 'auto' to run the range test first)")
    backbone_lr_scale: float = opt(0.1, "unfrozen backbone layers train at lr * this (1 with --weights none: "
                                        "nothing pretrained to protect)")
    optimizer: str = opt("adamw", "adamw | adam | sgd", choices=("adamw", "adam", "sgd"))
    weight_decay: float = opt(0.05, "decoupled weight decay (not applied to biases and norms)")
    warmup_epochs: float = opt(1.0, "linear warm-up length, then cosine decay to zero")
    label_smoothing: float = opt(0.1, "cross-entropy label smoothing")
    batch_size: str = opt("64", "images per optimizer step, or 'auto' (largest that fits the GPU; 64 on CPU)")
    accumulate: int = opt(1, "split each batch into this many micro-batches (same maths, less memory)")
    image_size: int = opt(0, "input size in pixels; 0 uses the backbone's own")
    augment: str = opt("none", "training augmentation (torchvision v2, seeded per image): none | flip | light "
                               "(RandomResizedCrop scale 0.35-1 + flip) | strong (light + TrivialAugmentWide + "
                               "RandomErasing 0.1) | a comma list of crop[:MIN_SCALE], flip[:P], jitter[:S], "
                               "grayscale[:P], blur[:ODD_K], rotate[:DEG], trivial, erase[:P]. Validation and test "
                               "are never augmented. Do not flip digits or text")
    views: int = opt(0, "with a random --augment: V fixed augmented views of each training image, one drawn per "
                        "image each epoch; with a frozen front each view's features are cached once (V x the "
                        "build, epochs at the cache's speed). 0: 4 views on the feature cache, a new draw every "
                        "epoch without it")
    mixup: float = opt(0.0, "MixUp alpha (0: off; 0.2 is the references' value): each image mixed with another of its "
                            "batch, labels mixed alike. On the feature cache it mixes the cached features")
    cutmix: float = opt(0.0, "CutMix alpha (0: off; 1.0 is the references' value); with --mixup each batch takes one "
                             "of the two. On the feature cache it cuts boxes of cached feature maps (not of pooled vectors)")
    feature_augment: str = opt("auto", "auto | none | brightness[:STRENGTH] (FroFA's channel-wise brightness on "
                                       "cached features: a per-image, per-channel offset of STRENGTH x U(-1, 1) x the "
                                       "features' std; default strength 0.5). Needs the feature cache. auto: "
                                       "brightness when stages train on cached features (--freeze N), none otherwise")
    shots: int = opt(0, "few-shot: only K training images per class (chosen by --seed; 0: all)")
    class_weights: str = opt("none", "none | balanced (weight each image's loss by n / (classes x its class's count): "
                                     "rare classes count as much as common ones)", choices=("none", "balanced"))
    sampler: str = opt("shuffle", "shuffle | balanced (draw each batch's images class-uniformly, with replacement; "
                                  "an epoch is still one training split's worth of images)",
                       choices=("shuffle", "balanced"))
    calibrate: bool = opt(True, "fit a temperature on the validation split after training, so that probabilities "
                                "match accuracy (--no-calibrate: T = 1)")
    train_limit: int = opt(0, "use only this many training images (a stratified sample by --seed; 0: all), "
                              "for quick experiments")
    exclude: str = opt("", "leave out the images FILE lists, in every split: audit.csv from `transferkit data audit` "
                           "(its path column, after deleting the rows to keep) or a text file of paths, one a line; "
                           "built-in sets name images SPEC:SPLIT:ROW (fashion-mnist:train:123)")
    seed: int = opt(0, "seed for splits, initialisation and data order; a CPU run repeats exactly")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N", )
    feature_cache: bool = opt(True, "cache the frozen part's outputs and train the rest on them (--no-feature-cache: "
                                    "the plain loop)")
    cache_dir: str = opt("", "cache folder for cached features and decoded images (default: the user cache dir); "
                             "`transferkit cache list` shows what it holds, `cache clear` empties it")
    data_cache: bool = opt(True, "decode image files once, at the run's size, into the cache folder and reuse them in "
                                 "every later run, eval, lr-find and embed (--no-data-cache: decode into memory each time)")
    feed: str = opt("auto", "how decoded images reach the model: auto (in memory up to 512 MB, else streamed) | "
                            "memory | stream (read from the decoded-image cache batch by batch: memory does not grow "
                            "with the data set)", choices=("auto", "memory", "stream"))
    decode_workers: int = opt(0, "processes that decode image files into the decoded-image cache (0: "
                                 "$TRANSFERKIT_DECODE_WORKERS if set, else every core this process may use, split "
                                 "between the torchrun processes of a machine); given, it wins over the variable")
    backend: str = opt("auto", "engine of the frozen forward pass that fills the feature cache, on the CPU: auto (the "
                               "fastest installed one that matches torch within 1e-4 on your images) | torch | "
                               "onnxruntime | openvino. Engines run on the CPU: naming one (or --precision int8) "
                               "with --device auto runs the whole run on the CPU",
                       choices=("auto", "torch", "onnxruntime", "openvino"))
    precision: str = opt("auto", "the precision of the forward passes: auto (bf16 autocast on a CUDA GPU that has it, "
                                 "else fp16; fp32 on the CPU) | fp32 | bf16 | fp16 | int8. On a CUDA GPU bf16 and fp16 "
                                 "are autocast (fp16 with a gradient scaler); on the CPU bf16 and int8 are the engine "
                                 "that fills the feature cache, kept only if, on the validation split, a probe's top-1 "
                                 "agreement with fp32 is at least 0.99 and its accuracy drops by at most 0.5 points, "
                                 "else the cache is built in fp32 (and the log says so). fp16 needs a GPU; int8 runs "
                                 "on the CPU (with --device auto the run moves there)",
                         choices=("auto", "fp32", "bf16", "fp16", "int8"))
    threads: int = opt(0, "CPU threads of the inference engines and of torch (0: every core)")
    skip_bad: bool = opt(False, "drop unreadable images (and say how many) instead of stopping")
    allow_outside_paths: bool = opt(False, "read image paths of a parquet file or CSV that lead outside its folder "
                                           "(absolute paths, ../); without it such rows are refused, so a downloaded "
                                           "data set cannot pull other local files into a run or its report")
    max_pixels: int = opt(89_478_485, "refuse images with more pixels than this (decompression bombs)")
    checkpoint_every: int = opt(0, "also checkpoint every N optimizer steps (0: at epoch ends only)")
    log: str = opt("none", "none | tensorboard (also write the per-epoch metrics as TensorBoard scalars in "
                           "RUN_DIR/tensorboard; needs pip install 'transferkit[tensorboard]'). metrics.csv is always written",
                   choices=("none", "tensorboard"))
    out: str = opt("", "run directory (default: runs/<model>-<time>)")
    resume: bool = opt(False, "continue the run in --out from its newest complete checkpoint")
    quiet: bool = opt(False, "plain log lines instead of progress bars")

    def validate(self) -> "TrainConfig":
        if not self.data:
            raise UserError("--data is required: a folder, a CSV, or a built-in name such as fashion-mnist or digits")
        for name in ("epochs", "accumulate"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if min(self.image_size, self.checkpoint_every, self.train_limit, self.shots, self.threads,
               self.decode_workers) < 0 or self.max_pixels < 1:
            raise UserError("--image-size, --max-pixels, --checkpoint-every, --train-limit, --shots, --threads and "
                            "--decode-workers must not be negative")
        if self.shots and self.train_limit:
            raise UserError("--shots and --train-limit both choose training images: give one of them")
        if self.batch_size != "auto" and not (str(self.batch_size).isdigit() and int(self.batch_size) > 0):
            raise UserError(f"--batch-size must be a positive integer or 'auto', got '{self.batch_size}'")
        if str(self.lr) != "auto":
            try:
                assert float(self.lr) > 0
            except (ValueError, AssertionError):
                raise UserError(f"--lr must be a positive number or 'auto', got '{self.lr}'") from None
        for f in fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise UserError(f"--{f.name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.feed == "stream" and not self.data_cache:
            raise UserError("--feed stream reads the decoded-image cache: drop --no-data-cache")
        if self.views < 0 or not (0 <= self.mixup < float("inf")) or not (0 <= self.cutmix < float("inf")):
            raise UserError("--views, --mixup and --cutmix must not be negative")
        if not (0 <= self.label_smoothing < 1) or self.backbone_lr_scale < 0 or self.warmup_epochs < 0:
            raise UserError("--label-smoothing must be in [0, 1); --backbone-lr-scale and --warmup-epochs >= 0")
        return self

    @property
    def cache(self) -> bool:
        """The feature cache's old name, for code that still reads it (the setting is ``feature_cache``)."""
        return self.feature_cache

    @property
    def backbone_scale(self) -> float:
        """The scale actually used: a model trained from scratch trains every layer at lr."""
        return 1.0 if self.weights == "none" else self.backbone_lr_scale

    def to_json(self) -> dict:
        return asdict(self)


def field_type(f) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[f.type if isinstance(f.type, str) else f.type.__name__]


def read_yaml(path: str) -> dict:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of setting: value")
    known = {f.name: f for f in fields(TrainConfig)}
    out = {}
    data = rename_settings({str(key).replace("-", "_"): value for key, value in data.items()}, RENAMED, path)
    for name, value in data.items():
        if name not in known:
            raise UserError(f"{path}: unknown setting '{name}'; settings are the train flags, e.g. epochs, lr, freeze")
        kind = field_type(known[name])
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # lr: 3e-4 and batch_size: 64 are fine as numbers
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"{path}: '{name}' must be {kind.__name__}, got {type(value).__name__} {value!r}")
        out[name] = value
    return out


def build_config(flags: dict, config_file: str | None = None) -> TrainConfig:
    """Defaults < YAML < flags (flags left at None were not given).

    With ``--resume`` the run's own settings come back from its checkpoint; what was given here
    is kept in ``cfg.given`` so that the trainer can accept what may change on a resume and
    refuse the rest (see ``resume_config``).
    """
    values = read_yaml(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    if values.get("resume"):
        if not values.get("out"):
            raise UserError("--resume needs --out RUN_DIR: the run to continue")
        cfg = TrainConfig(**values)
        cfg.given = frozenset(values)  # an attribute, not a field: never saved with the settings
        return cfg
    return TrainConfig(**values).validate()


# What a resume may change: how long it runs, how often it checkpoints, how it reports, where its
# caches live, how data is fed and which engine computes the frozen part (none of which changes a
# number beyond the 1e-4 every engine is held to).
CHANGEABLE_ON_RESUME = ("epochs", "checkpoint_every", "quiet", "cache_dir", "data_cache", "feed", "backend", "threads",
                        "decode_workers")

# Renamed settings: the old flag (hidden from --help), YAML key and fit() keyword still work
# for one release, with one line saying what replaced them (core/deprecated.py).
RENAMED = {"amp": Renamed("precision", {"off": "fp32", False: "fp32"}, ("auto", "off", "bf16", "fp16")),
           "cache": Renamed("feature_cache")}


def saved_settings(saved: dict) -> dict:
    """Settings as a checkpoint or run.json stored them, in today's names: older runs still load and resume.

    Before, ``amp`` (CUDA autocast) and ``precision`` (the CPU engines) were two settings and a run
    used at most one (a GPU refused a reduced engine precision; the CPU ignored ``amp``): a reduced
    engine precision is what ran on the CPU, else ``amp`` on a GPU; a run on ``--device cpu`` never used ``amp``.
    """
    out = dict(saved)
    if "cache" in out:
        out.setdefault("feature_cache", out.pop("cache"))
    if "amp" in out:
        amp = out.pop("amp")
        if out.get("precision", "fp32") == "fp32":
            out["precision"] = "fp32" if out.get("device") == "cpu" else RENAMED["amp"].value(amp)
    return out


def resume_config(saved: dict, cfg: TrainConfig) -> TrainConfig:
    """The checkpoint's settings, with the few a resume may change taken from ``cfg``.

    Any other setting given with a different value is refused: silently training on with other
    data, another model or another learning rate than the flags say would be worse.
    """
    given = getattr(cfg, "given", frozenset())
    saved = saved_settings(saved)
    ignore = {"resume", "out", *CHANGEABLE_ON_RESUME}
    differ = sorted(k for k in given - ignore if k in saved and getattr(cfg, k) != saved[k])
    if differ:
        shown = ", ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)} (the run has {saved[k]})" for k in differ)
        raise UserError(f"--resume continues the run with its own settings; these differ: {shown}. "
                        f"Only {', '.join('--' + k.replace('_', '-') for k in CHANGEABLE_ON_RESUME)} may change on a resume")
    changed = {k: getattr(cfg, k) for k in CHANGEABLE_ON_RESUME if k in given}
    return TrainConfig(**{**saved, **changed, "resume": True, "out": cfg.out}).validate()


def add_arguments(parser, skip: tuple = ()) -> None:
    """One ``--flag`` per field (except ``skip``), default None so that YAML values survive unset flags."""
    import argparse

    for old, renamed in RENAMED.items():
        if renamed.new not in skip:
            switch = field_type(TrainConfig.__dataclass_fields__[renamed.new]) is bool
            add_renamed_flags(parser, old, renamed, boolean=switch)
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata['help']} (default: {default})"
        if field_type(f) is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=field_type(f), default=None, help=help_text, metavar=f.name.upper())
