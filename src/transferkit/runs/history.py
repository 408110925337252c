"""``metrics.csv``: one row per epoch, plus one ``eval:<split>`` row per ``transferkit eval``."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from transferkit.core.safeio import write_text_atomic

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "seconds", "images_per_s"]


def write_history(run_dir: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(Path(run_dir) / "metrics.csv", buffer.getvalue())


def append_eval_row(run_dir: Path, split: str, result: dict) -> None:
    path = Path(run_dir) / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({"epoch": f"eval:{split}", "val_loss": round(result["loss"], 6),
                         "val_acc": round(result["top1"], 6), "val_top5": round(result["top5"], 6)})


def read_history(run_dir: Path) -> list[dict]:
    """Training rows of metrics.csv (eval rows, ``epoch`` = ``eval:<split>``, are left out)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if not str(row.get("epoch", "")).isdigit():
                continue
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    return rows
