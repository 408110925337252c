"""Every subcommand's flags, in one place that imports nothing heavy: ``transferkit --help`` and
``transferkit train --help`` answer without loading torch. Each command's work lives in
``transferkit/cli/<module>.py`` as ``run(args) -> exit status``; ``set_defaults(module=...)`` names it.
"""
from __future__ import annotations

import argparse

from transferkit import __version__
from transferkit.core.config import add_arguments
from transferkit.core.deprecated import renamed_value

# For every command that loads a run: a run trained on users' code stores that code, run only with --trust-code.
TRUSTED_RUN = ("a run directory. A run trained on your own model, head or plugin code keeps that code in "
               "RUN_DIR/code/; it runs only with --trust-code")
TRUST_HELP = ("run the Python code the run directory names (its RUN_DIR/code/*.py model, head or plugin, or a torch.hub "
              "model); without it such a run is refused. Read the code first: a downloaded run can hold any code")
LOADS_RUNS = ("train", "eval", "predict", "embed", "export", "serve")  # commands that load a run (train: --resume)
CACHE_DIR_HELP = ("the cache folder holding decoded images and converted engines (default: the run's own --cache-dir, else the user "
                  "cache dir)")
OUTSIDE_HELP = ("read image paths of a parquet file or CSV that lead outside its folder (absolute paths, ../); "
                "without it such rows are refused: a downloaded data set cannot pull in other local files")
PLUGIN_HELP = ("import FILE.py first; it may register backbones with @transferkit.register_backbone('name'). "
               "This runs FILE.py's code: only use plugins you trust")

TTA_HELP = ("test-time augmentation: flip | crops | flip,crops (the four corner crops of 7/8 of the side; "
            "flip mirrors every view); the views' calibrated probabilities are averaged. Off by default: "
            "it costs one forward pass per view (see benchmarks/RESULTS.md for what it gains)")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming the problem (still exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(subparsers, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


WEIGHTS_HELP = ("with --model: imagenet (default: ImageNet weights, those already on this machine first), a torchvision "
                "weight name (DEFAULT, IMAGENET1K_V1, MobileNet_V2_Weights.IMAGENET1K_V1), a timm tag "
                "(timm/resnet50.a1_in1k), or PATH to .safetensors/.pth")


ENGINES = ("auto", "torch", "onnxruntime", "openvino")
EXPORTED = ("onnx", "torchscript", "openvino-ir")  # files `transferkit export` wrote into RUN_DIR
BACKEND_HELP = ("engine of the frozen forward pass on the CPU: auto (default: the fastest installed one that matches "
                "torch within 1e-4 on your images; torch for jobs under 64 images; on a GPU, torch) | torch | "
                "onnxruntime | openvino (the run's weights converted once and cached beside the feature cache). The "
                "engines run on the CPU: with --device auto a command that names one runs there")
EXPORTED_HELP = ("; or a file `transferkit export --format F` wrote into RUN_DIR, by the same name F: onnx (model.onnx on "
                 "onnxruntime), torchscript (model.torchscript), openvino-ir (model.xml on OpenVINO)")
PRECISION_HELP = ("fp32 (default, exact) | bf16 | fp16 | int8. On a CUDA GPU bf16 and fp16 are autocast; on the CPU "
                  "bf16 and int8 (calibrated on the run's training images) are the engine's, kept only if, on the "
                  "validation split, top-1 agreement with fp32 is >= 99%% and accuracy drops <= 0.5 points, else "
                  "refused with the numbers (exit 2). fp16 needs a GPU; int8 runs on the CPU")
DECODE_WORKERS_HELP = ("processes that decode image files into the decoded-image cache (default 0: "
                       "$TRANSFERKIT_DECODE_WORKERS if set, else every core); given, it wins over the variable")


def add_engine_flags(p, exported: bool = False) -> None:
    """--backend, --precision, --threads: the same meaning in every command that runs a frozen network."""
    p.add_argument("--backend", choices=ENGINES + (EXPORTED if exported else ()), default="auto",
                   help=BACKEND_HELP + (EXPORTED_HELP if exported else ""))
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default="fp32", help=PRECISION_HELP)
    p.add_argument("--threads", type=int, default=0, help="CPU threads of the engine (default 0: every core)")


ROBUST_HELP = ("weight in [0, 1] of accuracy under corruptions (noise, blur, fog, contrast at severity 3, applied to "
               "held-out images) in the choice, when you have no validation images from where the model will be used "
               "(default 0: clean held-out accuracy only)")

DEFAULT_BUDGET_TEXT = "10m"  # plan/budget.DEFAULT_BUDGET (not imported: --help loads nothing heavy)

# Train flags that mean nothing to a sweep of ~100 steps (and --out names the plot here, not a run dir).
NOT_FOR_SWEEP = ("out", "resume", "epochs", "lr", "warmup_epochs", "checkpoint_every", "log")


def _models(sub):
    p = add_command(sub, "models", "list backbones and whether their ImageNet weights are available now",
                    "transferkit models --offline")
    p.add_argument("--offline", action="store_true", help="only models whose weights are on this machine")
    p.set_defaults(module="models")


AUDIT_HELP = ("label issues (confident learning on out-of-fold probabilities), near-duplicates (flip-invariant, "
              "grouped; across splits = leakage, exit 1) and outliers, from the features of a pretrained backbone "
              "(cached: a later train --freeze backbone reuses them); writes audit.html, audit.csv, audit.json")


def _audit_flags(p, deep: bool = False) -> None:
    """The flags of an audit: ``data audit``, and ``data check --deep``."""
    when = "with --deep: " if deep else ""
    p.add_argument("--model", help=f"{when}backbone whose features are compared (default: a run's own when SPEC is a "
                                   "run directory, else efficientnet_lite0, whose weights ship with transferkit)")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: the backbone's own)")
    p.add_argument("--out", default=None, metavar="DIR", help=f"{when}where audit.html, audit.csv and audit.json go "
                                                             "(default: ./audit)")
    p.add_argument("--threshold", type=float, default=None,
                   help="flip-invariant cosine similarity two images need at the least to be near-duplicates "
                        "(default 0.88, measured with known copies: benchmarks/RESULTS.md)")
    p.add_argument("--margin", type=float, default=None,
                   help="how far above both images' 10th-nearest neighbour a pair's similarity must stand, unless it "
                        "reaches 0.96 (default 0.12; 0: similarity alone)")
    p.add_argument("--seed", type=int, default=None, help="seed of the folds and of a plain folder's train/val split "
                                                          "(default: a run's own, else 0)")
    p.add_argument("--skip-bad", action="store_true", help="drop unreadable images (and say how many) instead of stopping")
    p.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    p.add_argument("--device", default="auto")
    add_engine_flags(p)
    p.add_argument("--quiet", action="store_true")


def _data(sub):
    p = add_command(sub, "data", "inspect a data set", "transferkit data check path/to/images\n"
                    "  transferkit data audit path/to/images --out audit/")
    data_sub = p.add_subparsers(dest="data_command", metavar="check|audit", parser_class=Parser)
    data_sub.required = True
    c = data_sub.add_parser("check", help="classes, counts, duplicates and unusable files; exit 1 when not clean",
                            description="Scan a data set: classes and counts, class imbalance, duplicate files "
                                        "(by content hash) within and across splits, and every unusable file with "
                                        "the reason. Exit 0 when clean, 1 when not. --deep also audits it (see "
                                        "`data audit --help`).",
                            epilog="example:\n  transferkit data check path/to/images\n"
                                   "  transferkit data check path/to/images --deep --out audit/",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("spec", help="data SPEC (folder, CSV or built-in name)")
    c.add_argument("--format", choices=("table", "json"), default="table")
    c.add_argument("--max-pixels", type=int, default=None, help="images above this many pixels are reported")
    c.add_argument("--allow-outside-paths", action="store_true", help=OUTSIDE_HELP)
    c.add_argument("--decode-workers", type=int, default=0, metavar="N",
                   help="threads that open and inspect the files (default 0: 4)")
    c.add_argument("--deep", action="store_true", help="also run `data audit`: " + AUDIT_HELP)
    _audit_flags(c, deep=True)
    c.set_defaults(module="data")
    a = data_sub.add_parser("audit", help="wrong labels, near-duplicates, leakage across splits and outliers; "
                                          "exit 1 on leakage",
                            description="Audit a data set: " + AUDIT_HELP + ". SPEC may also be a run directory: its "
                                        "data, backbone, weights, image size and seed are used. Exit 0, or 1 when "
                                        "images of one split are near-copies of images of another.",
                            epilog="example:\n  transferkit data audit path/to/images --out audit/\n"
                                   "  transferkit train --data path/to/images --exclude audit/audit.csv   # after review",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("spec", help="data SPEC (folder, CSV or built-in name), or a run directory")
    a.add_argument("--format", choices=("table", "json"), default="table",
                   help="what is printed: a summary (table) or every finding (json)")
    a.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels than this")
    _audit_flags(a)
    a.set_defaults(module="data")


def _train(sub):
    p = add_command(sub, "train", "fine-tune a pretrained backbone on your classes; writes a run directory",
                    "transferkit train --data path/to/images --model resnet18 --freeze backbone --epochs 5 --out runs/pets")
    p.add_argument("--config", metavar="FILE.yaml", help="settings file with the same names as the flags (flags win)")
    p.add_argument("--budget", metavar="TIME", help="choose the recipe for you and finish within TIME (90s, 10m, 1h; "
                   "+5%%): rank backbones and sizes on a sample, pilot a fine-tune, then train the recipe expected "
                   "to score best in the time left (run.json and report.html say what was chosen and why)")
    p.add_argument("--auto", action="store_true", help=f"--budget {DEFAULT_BUDGET_TEXT}")
    p.add_argument("--models", help="with --budget/--auto: the backbones to choose from, comma-separated (default: "
                   "--model if given, else those with weights on this machine)")
    p.add_argument("--sizes", help="with --budget/--auto: input sizes to choose from (default: --image-size if "
                   "given, else 96,160,224)")
    p.add_argument("--robust", type=float, default=0.0, help="with --budget/--auto: " + ROBUST_HELP)
    add_arguments(p)
    p.set_defaults(module="train")


def _lr_find(sub):
    p = add_command(sub, "lr-find", "learning-rate range test: sweep the lr from 1e-7 to 1 on the training path "
                    "and suggest the steepest descent of the loss (what `train --lr auto` uses)",
                    "transferkit lr-find --data path/to/images --model resnet18 --freeze backbone --out lr_find.png")
    p.add_argument("--config", metavar="FILE.yaml", help="the same settings file as train (flags win)")
    p.add_argument("--out", default="lr_find.png", metavar="FILE.png", help="where to write the plot (default: lr_find.png)")
    p.add_argument("--steps", type=int, default=100, help="sweep length in optimizer steps (default: 100)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--end-lr", type=float, default=1.0, help="last learning rate (default: 1)")
    add_arguments(p, skip=NOT_FOR_SWEEP)
    p.set_defaults(module="lr_find")


def _eval(sub):
    p = add_command(sub, "eval", "score a run on the test split of its data (val when it has none), or on --data",
                    "transferkit eval runs/pets --split test --format json\n"
                    "  transferkit eval runs/pets --corrupt 3 --corrupt-limit 1000   # ImageNet-C shift test")
    p.add_argument("run_dir", help=TRUSTED_RUN)
    p.add_argument("--data", help="another data SPEC whose class names are among the run's")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report", metavar="OUT.html",
                   help="also write the run's report, scored on this data and split, to OUT.html")
    p.add_argument("--skip-bad", action="store_true", help="drop unreadable images (and say how many) instead of stopping")
    p.add_argument("--tta", default="none", metavar="VIEWS", help=TTA_HELP)
    p.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    p.add_argument("--allow-outside-paths", action="store_true",
                   help=OUTSIDE_HELP + " (for --data; the run's own data is read as the run was)")
    p.add_argument("--decode-workers", type=int, default=0, metavar="N", help=DECODE_WORKERS_HELP)
    add_engine_flags(p)
    p.add_argument("--corrupt", nargs="?", const="3", metavar="SEVERITY",
                   help="the shift test: score the split clean and under the 15 ImageNet-C corruptions (noise, blur, weather, "
                        "digital) at SEVERITY 1-5 (default 3) or all; prints clean and mean corrupted accuracy, the worst "
                        "corruption and each one, writes RUN_DIR/eval/SPLIT_corrupt-s3.json and the report's section "
                        "(needs pip install 'transferkit[corrupt]')")
    p.add_argument("--corruptions", metavar="LIST",
                   help="with --corrupt: only these corruptions or families, e.g. noise,fog,pixelate (default: all 15)")
    p.add_argument("--corrupt-limit", type=int, metavar="N",
                   help="with --corrupt: score a stratified sample of about N images (the same for every run of the data) "
                        "to keep the test to minutes")
    p.set_defaults(module="eval")


def _report(sub):
    p = add_command(sub, "report", "(re)write a run's report.html: curves, confusion matrix, per-class scores, worst "
                    "errors, calibration and settings, in one self-contained page; and its model card README.md "
                    "and config.json (the Hugging Face model folder files)",
                    "transferkit report runs/pets            # writes runs/pets/report.html, README.md, config.json")
    p.add_argument("run_dir")
    p.add_argument("--out", metavar="FILE.html",
                   help="write the page here instead of RUN_DIR/report.html, and leave the run directory untouched")
    p.set_defaults(module="report")


def _predict(sub):
    p = add_command(sub, "predict", "top-k classes with calibrated probabilities for images (files or folders, walked "
                    "recursively)",
                    "transferkit predict runs/pets photo.jpg more_photos/ --topk 5\n"
                    "  transferkit predict --model efficientnet_lite0 photo.jpg   # ImageNet classes\n"
                    "  transferkit predict --model mobilenet_v2 --weights IMAGENET1K_V1 photo.jpg")
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|IMAGE", help=f"{TRUSTED_RUN}; then images or folders")
    p.add_argument("--model", help="predict ImageNet classes with this pretrained backbone instead of a run")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--device", default="auto")
    add_engine_flags(p, exported=True)
    p.add_argument("--tta", default="none", metavar="VIEWS", help=TTA_HELP)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(module="predict")


def _embed(sub):
    p = add_command(sub, "embed", "write the features each image gives the classifier, with labels and paths "
                    "(.npz, or .parquet with pyarrow)",
                    "transferkit embed runs/pets path/to/images --out pets.npz\n"
                    "  transferkit embed --model efficientnet_lite0 digits --out digits.npz")
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|DATA", help="a run directory and a data SPEC, or only DATA with --model")
    p.add_argument("--model", help="embed with this pretrained backbone instead of a run")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--out", required=True, help="output .npz or .parquet file")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the train/val split of a plain folder (default: the run's own seed; 0 with --model)")
    p.add_argument("--skip-bad", action="store_true", help="drop unreadable images (and say how many) instead of stopping")
    p.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    p.add_argument("--allow-outside-paths", action="store_true", help=OUTSIDE_HELP)
    p.add_argument("--decode-workers", type=int, default=0, metavar="N", help=DECODE_WORKERS_HELP)
    p.add_argument("--device", default="auto")
    add_engine_flags(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(module="embed")


def _export(sub):
    p = add_command(sub, "export", "write the run's model as ONNX, TorchScript or OpenVINO IR (checked against PyTorch) "
                    "into the run dir; `predict`/`serve --backend F` run the file of format F",
                    "transferkit export runs/pets --format onnx\n"
                    "  transferkit predict runs/pets --backend onnx photo.jpg   # use it\n"
                    "  transferkit export runs/pets --format openvino-ir --precision int8\n"
                    "  transferkit serve runs/pets --backend openvino-ir")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=EXPORTED, default="onnx", metavar="{" + ",".join(EXPORTED) + "}",
                   type=renamed_value("--format", {"openvino": "openvino-ir"}),
                   help="onnx -> RUN_DIR/model.onnx, torchscript -> RUN_DIR/model.torchscript, openvino-ir -> "
                        "RUN_DIR/model.xml + model.bin (OpenVINO IR) (default onnx); the same names as predict's and "
                        "serve's --backend")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="fp32 (default; checked within 1e-4 of PyTorch) | bf16 (openvino-ir: a precision hint stored "
                        "with the file) | int8 (onnx, openvino-ir: static quantization calibrated on the run's training "
                        "images); reduced precision is written only if, on the validation split, top-1 agreement "
                        "with PyTorch is >= 99%% and accuracy drops <= 0.5 points")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default 17)")
    p.add_argument("--samples", type=int, default=8, help="images used for the parity check (default 8)")
    p.set_defaults(module="export")


def _serve(sub):
    p = add_command(sub, "serve", "serve the run's model over HTTP: POST /predict, a web page at /, /metadata, /healthz",
                    "transferkit serve runs/pets --port 8000\n"
                    "  curl -F file=@photo.jpg 'http://127.0.0.1:8000/predict?topk=3'")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000)
    add_engine_flags(p, exported=True)
    p.add_argument("--tta", default="none", metavar="VIEWS", help=TTA_HELP)
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own copy of the model")
    p.add_argument("--max-bytes", default="10MB", help="largest request body (default 10MB); bigger ones get 413")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="largest image, in pixels, read from its header before decoding (default 50 million); 422")
    p.add_argument("--max-decodes", type=int, default=0,
                   help="images decoded at once per worker (default 0: its share of the cores, at most 4); each "
                        "holds up to ~30 bytes per pixel while it decodes, the others wait with their bytes only")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a request may take, upload included (408 while its body is still arriving, else 504)")
    p.add_argument("--max-batch", type=int, default=16, help="most requests answered by one forward pass")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its forward pass (default 5 ms)")
    p.set_defaults(module="serve")


def _demo(sub):
    p = add_command(sub, "demo", "the main job, offline: fine-tune efficientnet_lite0 on Fashion-MNIST, "
                    "evaluate on all 10,000 test images, predict a few", "transferkit demo --out runs/demo")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo; replaced if it exists)")
    p.add_argument("--epochs", type=int, default=None, help="override the demo recipe's epochs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(module="demo")


def _rank(sub):
    p = add_command(sub, "rank", "score backbones and input sizes on a sample of your data, best first: the features "
                    "of each go through the frozen backbone once, then one-pass heads (logistic regression, k-NN, "
                    "nearest class mean) are scored on held-out images, with LogME; plus each one's images/s here",
                    "transferkit rank --data path/to/images --sizes 96,160,224\n"
                    "  transferkit rank --data digits --models efficientnet_lite0,efficientnet_lite1 --format json")
    p.add_argument("--data", required=True, help="data SPEC (as for train). With its own val split (a val/ folder, "
                   "CSV rows marked val), the heads are scored on it: put images from where the model will be used "
                   "there. Without one, training images are cross-validated")
    p.add_argument("--models", help="comma-separated backbones (default: those with weights on this machine, "
                   "`transferkit models --offline`)")
    p.add_argument("--sizes", help="comma-separated input sizes in pixels (default: 96,160,224)")
    p.add_argument("--sample", default="2000", help="images to score with, a stratified sample of train+val, or all "
                   "(then `train --freeze backbone` reuses every cached feature) (default 2000)")
    p.add_argument("--budget", help="time limit for ranking (90s, 5m): candidates predicted not to fit are skipped")
    p.add_argument("--robust", type=float, default=0.0, help=ROBUST_HELP)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the folds (default 0)")
    p.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    p.add_argument("--skip-bad", action="store_true", help="drop unreadable images instead of stopping")
    add_engine_flags(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(module="rank")


def _cache(sub):
    p = add_command(sub, "cache", "what the cache folder holds (cached features, decoded images), and emptying it; "
                    "deleting it is always safe: a later run rebuilds what it needs",
                    "transferkit cache list\n  transferkit cache clear --kind images")
    cache_sub = p.add_subparsers(dest="cache_command", metavar="list|clear", parser_class=Parser)
    cache_sub.required = True
    for name, text in (("list", "every cache entry with its size, and the total per kind"),
                       ("clear", "delete cache entries (entries that a running process is building are skipped)")):
        c = cache_sub.add_parser(name, help=text, description=text)
        c.add_argument("--cache-dir", help="the cache folder (default: the user cache dir, as for train)")
        c.add_argument("--kind", choices=("features", "images", "engines", "all"), default="all",
                       help="cached features, decoded images, converted networks (ONNX, OpenVINO), or all (default)")
        if name == "list":
            c.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(module="cache")


COMMANDS = (_models, _data, _train, _rank, _lr_find, _eval, _report, _predict, _embed, _export, _serve, _demo, _cache)  # --help order


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="transferkit", description="Transfer learning for image classification with PyTorch.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py", help=PLUGIN_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for register in COMMANDS:
        register(sub)
    for command in sub.choices.values():
        # Also accepted after the subcommand (`transferkit train --plugin p.py ...`). Its own
        # dest: a subparser's default would otherwise overwrite the global flag's value.
        command.add_argument("--plugin", action="append", default=[], dest="command_plugins", metavar="FILE.py",
                             help=PLUGIN_HELP)
    for name in LOADS_RUNS:
        sub.choices[name].add_argument("--trust-code", action="store_true", help=TRUST_HELP)
    return parser
