"""The report's and lr-find's figures, as PNG bytes.

matplotlib's object API with the Agg canvas, never pyplot: it draws off-screen without a
display and leaves the global backend of a user's notebook or program alone.
"""
from __future__ import annotations

import io

import numpy as np

TRAIN_COLOUR, VAL_COLOUR, ACCENT = "#1f77b4", "#ff7f0e", "#d62728"


def _figure(width: float, height: float, **subplots):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(**subplots) if subplots else fig.subplots()


def to_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    return buffer.getvalue()


def _epochs_axis(ax, epochs):
    ax.set_xlabel("epoch")
    if len(epochs) <= 12:  # whole epochs only; matplotlib would otherwise tick at 0.5 steps
        ax.set_xticks(epochs)
    ax.grid(alpha=0.3)


def curves_png(history: list[dict]) -> bytes:
    """Loss and accuracy per epoch, train and val side by side."""
    fig, (loss_ax, acc_ax) = _figure(11, 3.8, ncols=2)
    epochs = [int(r["epoch"]) for r in history]
    for ax, metric, title in ((loss_ax, "loss", "loss (train includes label smoothing)"), (acc_ax, "acc", "top-1 accuracy")):
        for split, colour in (("train", TRAIN_COLOUR), ("val", VAL_COLOUR)):
            values = [r.get(f"{split}_{metric}") for r in history]
            points = [(e, v) for e, v in zip(epochs, values) if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", color=colour, label=split)
        ax.set_title(title)
        _epochs_axis(ax, epochs)
        ax.legend()
    acc_ax.set_ylim(-0.02, 1.02)
    return to_png(fig)


def lr_png(history: list[dict]) -> bytes:
    """The learning rate of the head at the start of each epoch (warm-up, then cosine decay)."""
    fig, ax = _figure(5.5, 3.2)
    epochs = [int(r["epoch"]) for r in history if r.get("lr") is not None]
    ax.plot(epochs, [r["lr"] for r in history if r.get("lr") is not None], marker="o", color=TRAIN_COLOUR)
    ax.set_title("learning rate at epoch start")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    _epochs_axis(ax, epochs)
    return to_png(fig)


def confusion_png(cm: np.ndarray, classes: list[str]) -> bytes:
    """Counts and row-normalised (recall per true class) matrices, side by side."""
    from matplotlib.ticker import MaxNLocator

    n = len(classes)
    if n <= 20:  # side by side, within the page's width so nothing is scaled down
        side = float(np.clip(0.4 * n + 1.6, 4.0, 5.6))
        fig, axes = _figure(2 * side + 0.8, side, ncols=2)
    else:  # many classes: one above the other, as large as the page allows
        side = float(np.clip(0.1 * n + 5, 7, 11))
        fig, axes = _figure(side + 0.8, 2 * side, nrows=2)
    rows = cm.sum(1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    names = [c if len(c) <= 16 else c[:15] + "…" for c in classes]
    step = max(1, int(np.ceil(n / 40)))  # past ~40 classes, label every k-th one
    for ax, matrix, title, fmt in ((axes[0], cm, "counts", "{:d}"), (axes[1], normalised, "row-normalised (recall)", "{:.2f}")):
        image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(matrix.max(), 1e-9) if fmt == "{:d}" else 1)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if fmt == "{:d}":
            bar.locator = MaxNLocator(integer=True)  # counts: no 0.25 ticks
            bar.update_ticks()
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ticks = np.arange(0, n, step)
        tilt = n > 4 and max(len(c) for c in names) > 2  # digits and short codes read fine upright
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45 if tilt else 0, ha="right" if tilt else "center",
                      fontsize=9)
        ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=9)
        if n <= 20:  # numbers in the cells stay legible up to about 20 classes
            limit = matrix.max() / 2 if matrix.max() > 0 else 1
            for i in range(n):
                for j in range(n):
                    value = matrix[i, j]
                    ax.text(j, i, fmt.format(int(value) if fmt == "{:d}" else value), ha="center", va="center",
                            fontsize=9 if n <= 10 else 7, color="white" if value > limit else "black")
    return to_png(fig)


def reliability_png(curves: list[tuple[str, list[dict], float]]) -> bytes:
    """Accuracy against confidence per bin (a calibrated model follows the diagonal), and how many fall
    in each; one column per ``(title, bins, ece)``: before and after the temperature, side by side."""
    fig, axes = _figure(6.2 * len(curves), 6, nrows=2, ncols=len(curves), height_ratios=(3, 1), sharex=True,
                        squeeze=False)
    for column, (title, bins, ece) in enumerate(curves):
        ax, hist = axes[0][column], axes[1][column]
        centres = np.array([(b["lo"] + b["hi"]) / 2 for b in bins])
        width = bins[0]["hi"] - bins[0]["lo"]
        used = np.array([b["count"] > 0 for b in bins])
        accuracy = np.array([b["accuracy"] for b in bins])
        confidence = np.array([b["confidence"] for b in bins])
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration" if column == 0 else None)
        ax.bar(centres[used], accuracy[used], width=width, color=TRAIN_COLOUR, edgecolor="white",
               label="accuracy" if column == 0 else None)
        # The gap runs from the bin's accuracy to its mean confidence: above the bar when over-confident, inside it when under.
        ax.bar(centres[used], confidence[used] - accuracy[used], bottom=accuracy[used], width=width, fill=False,
               hatch="///", edgecolor=ACCENT, linewidth=0.8, label="gap to mean confidence" if column == 0 else None)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: expected calibration error {ece:.3f}")
        ax.grid(alpha=0.3)
        hist.bar(centres, [b["count"] for b in bins], width=width, color="grey", edgecolor="white")
        hist.set_xlabel("confidence (probability of the predicted class)")
        hist.set_ylabel("images")
    fig.legend(loc="outside lower center", ncols=3, fontsize=9, frameon=False)  # never on top of the bars
    return to_png(fig)


def lr_find_png(finding) -> bytes:
    """Smoothed loss against the learning rate (log axis), the suggestion marked."""
    fig, ax = _figure(6.5, 4)
    ax.plot(finding.lrs, finding.raw_losses, color="grey", alpha=0.3, linewidth=1, label="loss per batch")
    ax.plot(finding.lrs, finding.losses, color=TRAIN_COLOUR, linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    lrs = np.asarray(finding.lrs)
    at = int(np.argmin(np.abs(np.log(lrs) - np.log(finding.suggestion))))
    ax.axvline(finding.suggestion, color=ACCENT, linestyle="--", linewidth=1)
    ax.plot([finding.suggestion], [finding.losses[at]], "o", color=ACCENT, markersize=8,
            label=f"suggestion {finding.suggestion:.2g}")
    # The diverged tail can be orders of magnitude above the rest: keep the interesting part in view.
    lowest = int(np.argmin(finding.losses))
    low, high = finding.losses[lowest], max(finding.losses[:lowest + 1])
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), max(high, low) + 0.6 * (high - low + 1e-9))
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend()
    return to_png(fig)
