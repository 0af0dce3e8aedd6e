"""Measuring forgetting: linear-probe accuracy before and after fine-tuning, and how far the
feature distribution moved (a label-aware optimal-transport distance next to plain L2).

Protocol (from LDIFS, used by Proxy-FDA): A_LP is the linear-probe accuracy of the fine-tuned
encoder on the fine-tuning task; ΔLP(D) = A_LP(θ_ft, D) − A_LP(θ0, D) on every other data set D,
negative when the encoder forgot. Probes are logistic regressions on frozen, L2-normalised
features, their regularisation chosen on a validation split and then refitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import stratified_split
from .errors import ProxyFDAError
from .validation import check_features, check_same_n, unit_rows

DEFAULT_CS = (0.1, 1.0, 10.0, 100.0)


@dataclass
class ProbeResult:
    accuracy: float  # on the test split, after refitting on train + validation
    C: float  # the inverse regularisation chosen on the validation split
    val_accuracy: dict[float, float] = field(default_factory=dict)


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    """Checked features with unit rows (probes and distances compare directions, not norms)."""
    return unit_rows(check_features(x, name), name, "drop the images whose features are all zero")


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 Cs: tuple[float, ...] = DEFAULT_CS, val_fraction: float = 0.25, seed: int = 0) -> ProbeResult:
    """Logistic-regression probe: C chosen on a validation split of the training data, then refitted."""
    from sklearn.linear_model import LogisticRegression

    x_train, x_test = _unit(x_train, "x_train"), _unit(x_test, "x_test")
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


def _class_members(labels: np.ndarray, max_per_class: int, rng) -> dict[int, np.ndarray]:
    """Each class's rows, at most ``max_per_class`` of them drawn at random."""
    members = {}
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        members[int(c)] = rng.choice(rows, max_per_class, replace=False) if len(rows) > max_per_class else rows
    return members


def _draw(n: int, max_points: int, rng) -> np.ndarray:
    return rng.choice(n, max_points, replace=False) if n > max_points else np.arange(n)


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

    Sets larger than ``max_points`` (and classes larger than ``max_per_class``) are subsampled at random,
    by the same draw for two sets of the same length (and the same labels): the pre-trained and
    fine-tuned features of the same images keep their pairs, so a set compared with itself is at
    distance 0 rather than at the distance between two random halves of it (0.6 on 1,500 Fashion-MNIST
    images, when the two draws were independent).
    """
    import ot

    x_a, x_b = _unit(x_a, "x_a"), _unit(x_b, "x_b")
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    if len(labels_a) != len(x_a) or len(labels_b) != len(x_b):
        raise ProxyFDAError("otdd needs one label per feature row")
    rng = np.random.default_rng(seed)
    keep_a = _draw(len(x_a), max_points, rng)
    keep_b = keep_a if len(x_b) == len(x_a) else _draw(len(x_b), max_points, rng)
    x_a, labels_a, x_b, labels_b = x_a[keep_a], labels_a[keep_a], x_b[keep_b], labels_b[keep_b]
    members_a = _class_members(labels_a, max_per_class, rng)
    members_b = members_a if np.array_equal(labels_a, labels_b) else _class_members(labels_b, max_per_class, rng)
    clouds_a = {c: x_a[rows] for c, rows in members_a.items()}
    clouds_b = {c: x_b[rows] for c, rows in members_b.items()}
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
    x_a, x_b = _unit(x_a, "x_a"), _unit(x_b, "x_b")
    check_same_n(x_a, x_b, "x_a", "x_b")
    return float(((x_a - x_b) ** 2).sum(1).mean())


# ---------------------------------------------------------------------------------------------
# forgetting of fine-tuning runs

#: the bundled sets a run is probed on when it was not fine-tuned on them, with their sample sizes
HELD_OUT_SETS = {"fashion-mnist:test": 3000, "textiles:all": 1500, "digits:all": 1797, "mnist:test": 1000}


def held_out_sets(task_data: str) -> dict[str, int]:
    """Every bundled held-out set but the one the run was fine-tuned on."""
    task = task_data.partition(":")[0]
    return {spec: n for spec, n in HELD_OUT_SETS.items() if spec.partition(":")[0] != task}


def _correlation(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    from scipy.stats import pearsonr, spearmanr

    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    return {"pearson": float(pearsonr(xs, ys)[0]), "spearman": float(spearmanr(xs, ys)[0]), "n_runs": len(xs)}


def run_names(paths: list) -> list[str]:
    """One name per run directory: its folder name, or, where runs share a folder name, the shortest
    path suffix that tells them apart (runs/a/naive and runs/b/naive -> a/naive and b/naive).

    A directory listed twice cannot be told apart from itself and is refused.
    """
    resolved = [Path(p).expanduser().resolve() for p in paths]
    parts = [path.parts[1:] for path in resolved]  # without the root, so a suffix never starts with "/"
    depth = [1] * len(parts)
    while True:
        names = ["/".join(pieces[-d:]) for pieces, d in zip(parts, depth)]
        clashing = [i for i, name in enumerate(names) if names.count(name) > 1]
        if not clashing:
            return names
        if all(depth[i] >= len(parts[i]) for i in clashing):
            raise ProxyFDAError(f"the run directory {resolved[clashing[0]]} is listed more than once; "
                                "give each run once")
        for i in clashing:
            depth[i] = min(depth[i] + 1, len(parts[i]))


def forgetting_report(run_dirs: list, held_out: dict[str, int] | None = None, seed: int = 0,
                      progress=None) -> dict:
    """A_LP, ΔLP per held-out set (and their mean), OTDD and L2 feature distances, for each run.

    With three runs or more, also the correlation of ΔLP with OTDD and with L2 across runs. Each run
    keeps its own measurement (`Run.save_forgetting`), so a runs table can show it later. Runs are
    keyed by `run_names`: their folder names, lengthened into paths only where two would clash.
    """
    from .backbones import OpenClipEncoder
    from .data import load_images
    from .encoders import create_encoder
    from .features import extract_features
    from .methods import method_label
    from .runs import Run

    say = progress or (lambda message: None)
    image_cache: dict = {}
    encoder_cache: dict = {}
    pre_cache: dict = {}

    def pretrained(base: str, size: int | None):
        """One pre-trained encoder per (spec, resolution), shared by runs and held-out sets."""
        if (base, size) not in encoder_cache:
            encoder_cache[base, size] = create_encoder(base, image_size=size)
        return encoder_cache[base, size]

    def images(spec: str, n: int | None):
        if (spec, n) not in image_cache:
            image_cache[spec, n] = load_images(spec, n=n, seed=seed)
        return image_cache[spec, n]

    def pre_probe(base: str, size: int, spec: str, n: int | None):
        """Pre-trained features and probe accuracy, shared by runs with the same base encoder."""
        key = (base, size, spec, n)
        if key not in pre_cache:
            data = images(spec, n)
            feats = extract_features(pretrained(base, size), data)
            pre_cache[key] = (feats, probe_accuracy(feats, data.labels, seed=seed).accuracy)
        return pre_cache[key]

    running = [str(path) for path in run_dirs if Run.open(path).status == "running"]
    if running:  # its weights still change, and its measurement could not be kept with it
        raise ProxyFDAError(f"run {', '.join(running)} is still being trained; measure its forgetting once it "
                            "has finished (or stop it first)")
    runs: dict[str, dict] = {}
    opened = [Run.open(run_dir) for run_dir in run_dirs]
    for name, run in zip(run_names([run.path for run in opened]), opened):
        config = run.config
        say(f"{name}: probing")
        run.warn_if_incomplete()
        finetuned = create_encoder(run.spec)
        size = finetuned.image_size
        task = images(config.eval_data, None)
        task_ft = extract_features(finetuned, task)
        entry = {"method": config.method, "label": method_label(config), "A_LP": probe_accuracy(task_ft, task.labels, seed=seed).accuracy,
                 "A_LP_pretrained": pre_probe(config.base_encoder, size, config.eval_data, None)[1]}
        delta, dist_ot, dist_l2 = {}, {}, {}
        sets = held_out or held_out_sets(config.data)
        for spec, n in sets.items():
            data = images(spec, n)
            pre_feats, pre_acc = pre_probe(config.base_encoder, size, spec, n)
            ft_feats = extract_features(finetuned, data)
            delta[spec] = probe_accuracy(ft_feats, data.labels, seed=seed).accuracy - pre_acc
            dist_ot[spec] = otdd(pre_feats, data.labels, ft_feats, data.labels, seed=seed)
            dist_l2[spec] = feature_l2(pre_feats, ft_feats)
        for table in (delta, dist_ot, dist_l2):
            table["mean"] = float(np.mean(list(table.values())))
        entry.update(delta_LP=delta, otdd=dist_ot, l2=dist_l2)
        if isinstance(finetuned, OpenClipEncoder):  # a text tower: zero-shot accuracy is a second measure
            entry["zero_shot"] = _zero_shot(pretrained(config.base_encoder, size), finetuned,
                                            {spec: images(spec, n) for spec, n in sets.items()})
        runs[name] = entry
        run.save_forgetting({**entry, "held_out_sizes": sets, "seed": seed})
    report: dict = {"runs": runs, "held_out": sorted({s for r in runs.values() for s in r["delta_LP"] if s != "mean"})}
    deltas = [r["delta_LP"]["mean"] for r in runs.values()]
    report["correlation_with_delta_LP"] = {
        "otdd": _correlation([r["otdd"]["mean"] for r in runs.values()], deltas),
        "l2": _correlation([r["l2"]["mean"] for r in runs.values()], deltas),
    }
    return report


def _zero_shot(pretrained, finetuned, sets: dict) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy of both CLIP encoders on each set, with the text tower as classifier."""
    from .zeroshot import text_classifier, zero_shot_accuracy

    result = {}
    for spec, data in sets.items():
        before = zero_shot_accuracy(pretrained, data, text_classifier(pretrained, data.class_names))
        after = zero_shot_accuracy(finetuned, data, text_classifier(finetuned, data.class_names))
        result[spec] = {"pretrained": before, "finetuned": after, "delta": after - before}
    return result


def frontier(rows: list[dict], label: str, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A method's trade-off frontier: (A_LP, mean ΔLP) in points over its strengths, sorted by A_LP.

    ``rows`` are runs of a sweep (``label``, ``strength``, ``seed``, ``A_LP``, ``delta_LP["mean"]``, as in
    benchmarks/tradeoff.py's tradeoff.json); one seed's, or each strength's mean over seeds.
    """
    mine = [r for r in rows if r["label"] == label and (seed is None or r["seed"] == seed)]
    strengths = sorted({r["strength"] for r in mine}, key=lambda s: -1 if s is None else s)
    points = []
    for strength in strengths:
        group = [r for r in mine if r["strength"] == strength]
        points.append((100 * np.mean([r["A_LP"] for r in group]), 100 * np.mean([r["delta_LP"]["mean"] for r in group])))
    points.sort()
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])
