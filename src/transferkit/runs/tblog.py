"""``--log tensorboard``: the per-epoch metrics.csv row, also as TensorBoard scalars.

metrics.csv is always written; TensorBoard is an optional extra because the ``tensorboard``
package (and its protobuf/grpc dependencies) is large and most runs never need it.
"""
from __future__ import annotations

from pathlib import Path

from transferkit.core.errors import UserError

# metrics.csv column -> TensorBoard tag; grouping train/val under one tag prefix puts them on one card.
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
        "val_top5": "accuracy/val_top5", "lr": "lr", "images_per_s": "speed/images_per_s"}


class NoLog:
    def epoch(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLog(NoLog):
    """Event files in ``RUN_DIR/tensorboard``: ``tensorboard --logdir RUN_DIR`` shows them."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--log tensorboard needs the tensorboard package: "
                            "pip install 'transferkit[tensorboard]' (or use --log none; metrics.csv is always written)") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def epoch(self, row: dict) -> None:
        for column, tag in TAGS.items():
            if row.get(column) is not None:
                self.writer.add_scalar(tag, float(row[column]), int(row["epoch"]))
        self.writer.flush()  # a crash or Ctrl-C later must not lose the epochs already logged

    def close(self) -> None:
        self.writer.close()


def open_log(kind: str, run_dir: Path):
    """The logger for ``--log``; raises the missing-package error before any training starts."""
    return TensorBoardLog(run_dir) if kind == "tensorboard" else NoLog()
