"""Class-balanced batches with hard class mining, as FDA expects: m classes × n images per batch.

FDA's kNN graph is built inside the batch, so the batch decides what a neighbourhood can contain:
with n images per class and K > n neighbours, every anchor's neighbourhood crosses class borders,
and mining classes whose pre-trained class means are similar puts the confusable classes together.

Both samplers are seeded and draw nothing else at random: a distributed run (`proxyfda.training` under
``torchrun``) draws the same global batch on every rank this way, and each rank trains on its share.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .errors import ProxyFDAError
from .validation import check_features


class EpochSampler:
    """Endless shuffled mini-batches of indices, reshuffled every epoch (seeded)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.rng = np.random.default_rng(seed)
        self.order, self.position = self.rng.permutation(n), 0

    def next_batch(self) -> np.ndarray:
        if self.position + self.batch_size > self.n:
            self.order, self.position = self.rng.permutation(self.n), 0
        batch = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch


class ClassBalancedSampler:
    """Endless, seeded batches of row indices into ``labels``: m classes × n images (default 16 × 4).

    Hard class mining: with probability ``hard_fraction`` a batch is a random seed class plus its m−1
    most similar classes (cosine of pre-trained class means), otherwise m classes drawn uniformly.
    Class means come from ``class_means`` ([C, D], rows in the order of ``self.classes``, the sorted
    distinct labels) or are computed from per-image pre-trained ``features`` [N, D].
    ``hard_fraction=None`` means 0.5 when class means are given and 0 (no mining) otherwise.

    With fewer than m classes every batch holds all of them, with the m·n images spread as evenly as
    possible. Within a class, images are drawn without replacement, cycling through a fresh shuffle;
    a class with fewer images than a batch needs is drawn with replacement and listed in
    ``records["with_replacement"]``. ``records`` also holds the last batch's classes and whether it
    was mined.
    """

    def __init__(self, labels: Any, m: int = 16, n: int = 4, *, features: Any = None, class_means: Any = None,
                 hard_fraction: float | None = None, seed: int = 0) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ProxyFDAError(f"labels must be a non-empty 1-D array (one class per image), got shape {labels.shape}")
        for name, value in (("m", m), ("n", n)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ProxyFDAError(f"{name} must be an integer >= 1 ({'classes' if name == 'm' else 'images per class'}"
                                    f" per batch), got {value!r}")
        self.classes, codes = np.unique(labels, return_inverse=True)
        self.m, self.n = int(m), int(n)
        self.batch_size = self.m * self.n
        self.members = [np.flatnonzero(codes == c) for c in range(len(self.classes))]
        self.similarity = self._class_similarity(codes, features, class_means)
        if hard_fraction is None:
            hard_fraction = 0.5 if self.similarity is not None else 0.0
        if isinstance(hard_fraction, bool) or not isinstance(hard_fraction, (int, float)) or not 0 <= hard_fraction <= 1:
            raise ProxyFDAError(f"hard_fraction must be a number in [0, 1], got {hard_fraction!r}")
        if hard_fraction > 0 and self.similarity is None:
            raise ProxyFDAError("hard class mining needs pre-trained class means: pass features= (one row per image) "
                                "or class_means= (one row per class), or set hard_fraction=0")
        self.hard_fraction = float(hard_fraction)
        self.rng = np.random.default_rng(seed)
        self._queues: list[np.ndarray] = [np.empty(0, dtype=np.int64) for _ in self.members]
        counts = self._per_class_counts(min(self.m, len(self.classes)))
        self.records: dict[str, Any] = {
            "with_replacement": [self.classes[c].item() for c in range(len(self.classes))
                                 if len(self.members[c]) < counts.max()],
        }

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> np.ndarray:
        """Row indices [m·n] of the next batch, grouped by class."""
        n_classes = len(self.classes)
        hard = n_classes > self.m and self.rng.random() < self.hard_fraction
        if n_classes <= self.m:
            chosen = self.rng.permutation(n_classes)
        elif hard:
            seed_class = int(self.rng.integers(n_classes))
            others = np.argsort(-self.similarity[seed_class], kind="stable")
            chosen = np.concatenate([[seed_class], others[others != seed_class][: self.m - 1]])
        else:
            chosen = self.rng.choice(n_classes, size=self.m, replace=False)
        counts = self._per_class_counts(len(chosen))
        batch = np.concatenate([self._draw(int(c), int(k)) for c, k in zip(chosen, counts)])
        self.records.update(classes=[self.classes[c].item() for c in chosen], hard=bool(hard))
        return batch

    def _per_class_counts(self, n_classes: int) -> np.ndarray:
        """Images per chosen class: n each, or the batch spread over fewer classes (extras to the first)."""
        counts = np.full(n_classes, self.batch_size // n_classes)
        counts[: self.batch_size % n_classes] += 1
        return counts

    def _draw(self, c: int, k: int) -> np.ndarray:
        members = self.members[c]
        if len(members) < k:
            return self.rng.choice(members, size=k, replace=True)
        if len(self._queues[c]) < k:
            self._queues[c] = np.concatenate([self._queues[c], self.rng.permutation(members)])
        taken, self._queues[c] = self._queues[c][:k], self._queues[c][k:]
        return taken

    def _class_similarity(self, codes: np.ndarray, features: Any, class_means: Any) -> np.ndarray | None:
        """Cosine similarity [C, C] between pre-trained class means, or None when none were given."""
        if features is not None and class_means is not None:
            raise ProxyFDAError("pass either features= (per image) or class_means= (per class), not both")
        if features is not None:
            feats = check_features(features, "features")
            if len(feats) != len(codes):
                raise ProxyFDAError(f"features has {len(feats)} rows but labels has {len(codes)}: one row per image")
            means = np.stack([feats[codes == c].mean(0) for c in range(len(self.classes))])
        elif class_means is not None:
            means = check_features(class_means, "class_means")
            if len(means) != len(self.classes):
                raise ProxyFDAError(f"class_means has {len(means)} rows but there are {len(self.classes)} classes: one "
                                    "row per class, in the order of the sorted distinct labels")
        else:
            return None
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        if not (norms > 0).all():
            raise ProxyFDAError("a class mean is the zero vector and has no direction; check the features")
        unit = means / norms
        return unit @ unit.T
