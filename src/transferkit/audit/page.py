"""``audit.html``: the findings to review, grouped by kind, most certain first, each with its
thumbnail, path, score and suggested action. Self-contained like report.html (runs/report.py):
thumbnails are inline PNG data URIs, CSS inline, no scripts, nothing fetched."""
from __future__ import annotations

import base64
import html

import torch

from transferkit.audit.audit import KINDS, Audit
from transferkit.audit.outputs import summary
from transferkit.runs.report import CSS, thumbnail

CARDS = 200  # findings of one kind shown with thumbnails; the rest are in audit.csv

EXTRA_CSS = """
.cards{margin-bottom:12px}figure.dup{grid-column:span 2}.pair{display:flex;gap:8px;justify-content:center}.pair img{margin:0 0 6px}
.score{font-weight:600}.action{color:#b3261e}.kept{color:#217a3c}
"""
TITLES = {"leakage": "Near-copies across splits (leakage)", "label": "Likely wrong labels",
          "duplicate": "Near-duplicates within a split", "outlier": "Outliers"}
WHY = {"leakage": "An image of one split is (nearly) the same as one of another: a test or validation image the "
                  "model also trains on inflates its scores. Remove one copy (the suggestion keeps the evaluation one).",
       "label": "Confident learning on out-of-fold probabilities (logistic regression on the features, averaged with "
                "a k-NN vote): the label given is unlikely and another is likely. Relabel, or exclude.",
       "duplicate": "Resized, re-encoded, mirrored or cropped copies within one split: they weigh twice in training "
                    "or in the score. Keep one.",
       "outlier": "Far from every other image, or far from the other images of its class: a wrong file, a corrupt "
                  "image, or a rare case worth keeping. Check it."}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img class="thumb" alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _thumb(audit: Audit, row: int) -> str:
    t = audit.table
    images = audit.sets.get(str(t.split[row]))
    try:
        pixels = images.batch(torch.tensor([int(t.row[row])]))[0].numpy()
    except (AttributeError, IndexError, OSError):
        return '<p class="note">image unavailable</p>'
    return _img(thumbnail(pixels), f"{t.split[row]} image {t.names[row]}")


def _card(audit: Audit, finding) -> str:
    t = audit.table
    picture = _thumb(audit, finding.row)
    css = ""
    if finding.kept >= 0:  # the copy beside the one it copies
        picture, css = f'<div class="pair">{picture}{_thumb(audit, finding.kept)}</div>', ' class="dup"'
    label = audit.classes[int(t.labels[finding.row])]
    return (f"<figure{css}>{picture}<figcaption><code>{_e(t.names[finding.row])}</code><br>{_e(t.split[finding.row])}, "
            f"labelled <b>{_e(label)}</b><br><span class=score>score {finding.score:.2f}</span> &middot; "
            f"<span class=action>{_e(finding.action)}</span><br>{_e(finding.detail)}</figcaption></figure>")


def render(audit: Audit, csv_name: str = "audit.csv") -> str:
    s = summary(audit)
    title = f"Data audit: {audit.spec}"
    parts = [f"<h1>{_e(title)}</h1>",
             f'<p class="sub">{s["images"]:,} images ({_e(", ".join(f"{k} {v:,}" for k, v in s["splits"].items()))}) '
             f"&middot; {len(audit.classes)} classes &middot; features of {_e(audit.model)} &middot; "
             f"{s['seconds']['total']:.1f} s</p>"]
    cards = [("estimated label-error rate", f"{s['estimated_label_error_rate']:.1%}")]
    cards += [(TITLES[k].lower(), f"{n:,}") for k, n in s["findings"].items()]
    parts.append('<div class="cards">' + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>'
                                                 for k, v in cards) + "</div>")
    parts.append(f'<p class="sub">Every finding is a row of <code>{_e(csv_name)}</code>. Delete the rows of the '
                 f"images to keep, then <code>transferkit train --exclude {_e(csv_name)} ...</code> leaves the others "
                 "out of every split.</p>")
    for kind in KINDS:
        mine = [f for f in audit.findings if f.kind == kind]
        parts.append(f"<h2>{_e(TITLES[kind])} ({len(mine):,})</h2><p class=sub>{_e(WHY[kind])}</p>")
        if not mine:
            parts.append('<p class="note">None found.</p>')
            continue
        parts.append('<div class="gallery">' + "".join(_card(audit, f) for f in mine[:CARDS]) + "</div>")
        if len(mine) > CARDS:
            parts.append(f'<p class="note">{len(mine) - CARDS:,} more, less certain, in {_e(csv_name)}.</p>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)} · transferkit</title><style>{CSS}{EXTRA_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
