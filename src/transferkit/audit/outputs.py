"""What an audit writes: ``audit.csv`` (one row per finding, a ``path`` column that ``train
--exclude`` reads), ``audit.json`` (the same findings with the summary), and the summary the
command prints. The page is page.py's."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from transferkit.audit.audit import KINDS, Audit
from transferkit.core.safeio import write_text_atomic

COLUMNS = ("path", "split", "row", "finding", "score", "label", "suggested_label", "action", "detail")
SHOWN = 5  # findings of each kind in the printed summary


def finding_rows(audit: Audit) -> list[dict]:
    t, classes = audit.table, audit.classes
    return [{"path": t.names[f.row], "split": str(t.split[f.row]), "row": int(t.row[f.row]), "finding": f.kind,
             "score": round(f.score, 4), "label": classes[int(t.labels[f.row])], "suggested_label": f.suggested,
             "action": f.action, "detail": f.detail} for f in audit.findings]


def summary(audit: Audit) -> dict:
    t = audit.table
    return {"data": audit.spec, "model": audit.model, "images": int(len(t.labels)),
            "splits": {s: int((t.split == s).sum()) for s in t.offsets}, "classes": audit.classes,
            "findings": audit.counts(), "leakage": audit.leakage,
            "estimated_label_error_rate": round(audit.label_issues.error_rate, 4),
            "duplicate_threshold": audit.threshold, "duplicate_margin": audit.margin,
            "duplicate_groups": len(audit.groups),
            "seconds": {k: round(v, 2) for k, v in audit.seconds.items()}}


def to_json(audit: Audit) -> dict:
    return {**summary(audit), "rows": finding_rows(audit)}


def csv_text(audit: Audit) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(finding_rows(audit))
    return buffer.getvalue()


def write_files(audit: Audit, out: Path, page: str) -> dict:
    """audit.csv, audit.json and audit.html in ``out``, each written whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "audit.csv", "json": out / "audit.json", "html": out / "audit.html"}
    write_text_atomic(files["csv"], csv_text(audit))
    write_text_atomic(files["json"], json.dumps(to_json(audit), indent=2) + "\n")
    write_text_atomic(files["html"], page)
    return files


def format_table(audit: Audit, files: dict) -> str:
    s = summary(audit)
    lines = [f"audit of {s['data']} with {s['model']}: {s['images']:,} images "
             f"({', '.join(f'{k} {v:,}' for k, v in s['splits'].items())}), {s['seconds']['total']:.1f} s",
             f"estimated label-error rate: {s['estimated_label_error_rate']:.1%} (confident learning)"]
    names = {"leakage": "near-copies across splits (leakage)", "label": "likely wrong labels",
             "duplicate": f"near-duplicates within a split (similarity >= {audit.threshold}, "
                          f"standing {audit.margin} above the neighbourhood)",
             "outlier": "outliers"}
    rows = finding_rows(audit)
    for kind in KINDS:
        mine = [r for r in rows if r["finding"] == kind]
        lines.append(f"{names[kind]}: {len(mine):,}")
        for r in mine[:SHOWN]:
            lines.append(f"  {r['score']:.2f}  {r['path']}  {r['action']}")
        if len(mine) > SHOWN:
            lines.append(f"  ... {len(mine) - SHOWN:,} more in {files['csv']}")
    lines.append(f"review: {files['html']}; exclude what you do not fix: delete from {files['csv'].name} the rows "
                 f"to keep, then train --exclude {files['csv']}")
    lines.append("NOT clean: images of one split are near-copies of images of another (leakage)" if audit.leakage
                 else "no leakage across splits")
    return "\n".join(lines)
