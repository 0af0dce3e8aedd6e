"""Measuring forgetting: linear-probe accuracy before and after fine-tuning, and how far the
feature distribution moved (a label-aware optimal-transport distance next to plain L2).

Protocol (from LDIFS, used by Proxy-FDA): A_LP is the linear-probe accuracy of the fine-tuned
encoder on the fine-tuning task; ΔLP(D) = A_LP(θ_ft, D) − A_LP(θ0, D) on every other data set D,
negative when the encoder forgot. Probes are logistic regressions on frozen, L2-normalised
features, their regularisation chosen on a validation split and then refitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ProxyFDAError
from .validation import check_features, check_same_n

DEFAULT_CS = (0.1, 1.0, 10.0, 100.0)


@dataclass
class ProbeResult:
    accuracy: float  # on the test split, after refitting on train + validation
    C: float  # the inverse regularisation chosen on the validation split
    val_accuracy: dict[float, float] = field(default_factory=dict)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, second) with ``fraction`` of every class in the first part."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = max(1, int(round(len(members) * fraction))) if len(members) > 1 else len(members)
        first.append(members[:cut])
        second.append(members[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 Cs: tuple[float, ...] = DEFAULT_CS, val_fraction: float = 0.25, seed: int = 0) -> ProbeResult:
    """Logistic-regression probe: C chosen on a validation split of the training data, then refitted."""
    from sklearn.linear_model import LogisticRegression

    x_train, x_test = _unit(check_features(x_train, "x_train")), _unit(check_features(x_test, "x_test"))
    if len(np.unique(y_train)) < 2:
        raise ProxyFDAError("a linear probe needs at least two classes in its training data")
    fit_idx, val_idx = stratified_split(y_train, 1.0 - val_fraction, seed)

    def fitted(C: float, idx: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=2000).fit(x_train[idx], y_train[idx])

    val_accuracy = {C: float(fitted(C, fit_idx).score(x_train[val_idx], y_train[val_idx])) for C in Cs}
    best = max(Cs, key=lambda C: (val_accuracy[C], -C))  # ties: the stronger regularisation
    model = fitted(best, np.arange(len(y_train)))
    return ProbeResult(float(model.score(x_test, y_test)), best, val_accuracy)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, train_fraction: float = 2 / 3, seed: int = 0,
                   **probe_options) -> ProbeResult:
    """Linear-probe accuracy on one labelled feature set split (stratified) into train and test."""
    train, test = stratified_split(labels, train_fraction, seed)
    return linear_probe(features[train], labels[train], features[test], labels[test], seed=seed, **probe_options)


# ---------------------------------------------------------------------------------------------
# distributional distance


def _class_clouds(x: np.ndarray, labels: np.ndarray, max_per_class: int, rng) -> dict[int, np.ndarray]:
    clouds = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) > max_per_class:
            members = rng.choice(members, max_per_class, replace=False)
        clouds[int(c)] = x[members]
    return clouds


def _w2_squared(a: np.ndarray, b: np.ndarray) -> float:
    import ot

    cost = ot.dist(a, b)  # squared euclidean
    return float(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost))


def otdd(x_a: np.ndarray, labels_a: np.ndarray, x_b: np.ndarray, labels_b: np.ndarray,
         max_points: int = 1000, max_per_class: int = 100, seed: int = 0) -> float:
    """A label-aware optimal-transport distance between two labelled feature sets (OTDD-style).

    Ground cost between (x, y) and (x', y'): ‖x − x'‖² + W₂²(class y of A, class y' of B), where
    the label term is the exact squared 2-Wasserstein distance between the two classes' point
    clouds (at most ``max_per_class`` points each). Returns the square root of the optimal
    transport cost. Features are L2-normalised first, so spaces of different scale compare.
    """
    import ot

    x_a, x_b = _unit(check_features(x_a, "x_a")), _unit(check_features(x_b, "x_b"))
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    if len(labels_a) != len(x_a) or len(labels_b) != len(x_b):
        raise ProxyFDAError("otdd needs one label per feature row")
    rng = np.random.default_rng(seed)
    if len(x_a) > max_points:
        keep = rng.choice(len(x_a), max_points, replace=False)
        x_a, labels_a = x_a[keep], labels_a[keep]
    if len(x_b) > max_points:
        keep = rng.choice(len(x_b), max_points, replace=False)
        x_b, labels_b = x_b[keep], labels_b[keep]
    clouds_a = _class_clouds(x_a, labels_a, max_per_class, rng)
    clouds_b = _class_clouds(x_b, labels_b, max_per_class, rng)
    classes_a, classes_b = sorted(clouds_a), sorted(clouds_b)
    label_cost = np.array([[_w2_squared(clouds_a[i], clouds_b[j]) for j in classes_b] for i in classes_a])
    row = {c: i for i, c in enumerate(classes_a)}
    col = {c: j for j, c in enumerate(classes_b)}
    rows = np.array([row[int(c)] for c in labels_a])
    cols = np.array([col[int(c)] for c in labels_b])
    cost = ot.dist(x_a, x_b) + label_cost[rows][:, cols]
    total = ot.emd2(np.full(len(x_a), 1 / len(x_a)), np.full(len(x_b), 1 / len(x_b)), cost)
    return float(np.sqrt(max(total, 0.0)))


def feature_l2(x_a: np.ndarray, x_b: np.ndarray) -> float:
    """Mean squared distance between paired L2-normalised features (LDIFS's point-wise distance)."""
    x_a, x_b = check_features(x_a, "x_a"), check_features(x_b, "x_b")
    check_same_n(x_a, x_b, "x_a", "x_b")
    return float(((_unit(x_a) - _unit(x_b)) ** 2).sum(1).mean())
