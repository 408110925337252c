"""Outliers: images far from every other image, and images far from their own class.

- **far from everything**: the mean cosine distance to the ``k`` nearest other images (mirror
  images counted), against the whole data set;
- **far from its own class**: the cosine distance to the mean of its class's images, against the
  other images of that class.

Each is a robust z-score (distance to the median in units of 1.4826 x the median absolute
deviation, which equals the standard deviation for normal data); above ``Z`` the image is listed.
A mislabelled image is also far from its (given) class: the audit lists it once, as a label issue.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferkit.audit.neighbors import Neighbours

Z = 4.0       # robust z-score above which an image is an outlier
K = 5         # neighbours whose mean distance measures isolation


@dataclass
class Outliers:
    isolation: np.ndarray      # (N,) robust z of the mean distance to the K nearest images
    atypical: np.ndarray       # (N,) robust z of the distance to its class's mean, within the class
    distance: np.ndarray       # (N,) that mean distance
    class_distance: np.ndarray  # (N,) that distance to the class mean


def robust_z(values: np.ndarray) -> np.ndarray:
    if not len(values):
        return values.astype(np.float64)
    median = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - median))
    return (values - median) / max(spread, 1e-6)


def find_outliers(x: np.ndarray, labels: np.ndarray, neighbours: Neighbours, classes: int) -> Outliers:
    """``x``: unit-length rows; ``neighbours``: their flip-invariant nearest neighbours."""
    k = min(K, neighbours.k)
    distance = (1 - neighbours.similarity[:, :k]).mean(1) if k else np.zeros(len(x))
    class_distance = np.zeros(len(x))
    atypical = np.zeros(len(x))
    for c in range(classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 3:
            continue
        centre = x[rows].mean(0)
        centre /= max(np.linalg.norm(centre), 1e-12)
        class_distance[rows] = 1 - x[rows] @ centre
        atypical[rows] = robust_z(class_distance[rows])
    return Outliers(robust_z(distance), atypical, distance, class_distance)
