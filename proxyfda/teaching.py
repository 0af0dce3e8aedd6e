"""A 2-D toy of fine-tuning and forgetting, run with the real loss modules, for the Teaching page.

Points of a few classes sit in the plane, each class in two sub-clusters: the "pre-trained" layout,
whose neighbourhoods carry structure the new task does not need. A small network (identity at the
start) moves them to solve a new task that pairs up opposite classes, so it must fold the plane.
Naive fine-tuning folds freely and neighbourhoods break; FDA and Proxy-FDA add their loss and hold
the pre-trained kNN graph while the task is learnt.

The losses work on directions (they L2-normalise), so a point p of the plane is given to them as the
unit vector along (p_x, p_y, 1): the plane is a map of the upper half of the sphere (a gnomonic
projection), near points have near directions, and any unit vector with a positive last coordinate,
such as a proxy, maps back to a point (x/z, y/z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ProxyFDAError
from .knn import knn_graph
from .losses import build_regularizer
from .metrics import knn_overlap
from .training import GENERATOR_LR
from .validation import check_choice

TOY_METHODS = ("naive", "fda", "proxy-fda")
#: the toy's training: Adam on the network and the task head (and the generator, as in training)
TOY_LR = 0.01
TASK_SCALE = 5.0  # logits = 5 · head(direction): directions have norm 1, so the head needs some gain
#: label smoothing bounds the margins the task asks for, so points do not run off to the horizon
TASK_SMOOTHING = 0.2


@dataclass(frozen=True)
class ToyProblem:
    """``pre`` [N, 2]: the pre-trained layout; ``labels`` [N]: its classes; ``task`` [N]: the new task's
    two labels (classes c and c + classes/2 share one, so opposite classes must meet)."""

    pre: np.ndarray
    labels: np.ndarray
    task: np.ndarray

    @property
    def n(self) -> int:
        return len(self.pre)

    def neighbours(self, k: int) -> np.ndarray:
        """[N, k]: each point's k nearest others in the pre-trained layout, as the losses see it."""
        return knn_graph(lift(torch.from_numpy(self.pre)).numpy(), k).indices


def toy_problem(classes: int = 4, per_class: int = 16, seed: int = 0) -> ToyProblem:
    """Classes evenly around a circle of radius 1.2, each as two sub-clusters side by side."""
    if classes < 2 or classes % 2:
        raise ProxyFDAError(f"the toy needs an even number of classes (at least 2), got {classes}")
    if per_class < 2:
        raise ProxyFDAError(f"the toy needs at least 2 points per class, got {per_class}")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    angle = labels * 2 * np.pi / classes
    side = np.where(np.arange(len(labels)) % 2 == 0, 1.0, -1.0)
    centre = 1.2 * np.stack([np.cos(angle), np.sin(angle)], 1)
    across = 0.35 * np.stack([-np.sin(angle), np.cos(angle)], 1) * side[:, None]
    pre = centre + across + 0.12 * rng.normal(size=(len(labels), 2))
    return ToyProblem(pre.astype(np.float32), labels, (labels % (classes // 2) == 0).astype(np.int64))


def lift(points: torch.Tensor) -> torch.Tensor:
    """Plane [N, 2] -> unit directions [N, 3] along (x, y, 1): how the losses see the toy's points."""
    return F.normalize(torch.cat([points, torch.ones_like(points[:, :1])], 1), dim=1)


def drop(directions: np.ndarray) -> np.ndarray:
    """Unit directions [..., 3] with a positive last coordinate -> points of the plane [..., 2]."""
    return directions[..., :2] / directions[..., 2:3]


class ToyRun:
    """One fine-tune of the toy, stepped on demand: ``method`` is naive, fda or proxy-fda (strength
    ``weight``, ``k`` neighbours; Proxy-FDA with ``n_proxies`` per side). Every run with the same seed
    starts from the same network and head, so runs of different methods differ by their loss alone."""

    def __init__(self, problem: ToyProblem, method: str = "naive", weight: float = 2.0, k: int = 5,
                 n_proxies: int = 2, seed: int = 0) -> None:
        self.problem, self.method = problem, check_choice(method, TOY_METHODS, "toy method")
        self.k = k
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
            self.head = nn.Linear(3, 2)
        nn.init.zeros_(self.net[-1].weight)  # the network starts as the identity: the pre-trained layout
        nn.init.zeros_(self.net[-1].bias)
        self.pre = torch.from_numpy(problem.pre)
        self.task = torch.from_numpy(problem.task)
        options = {"k": k, "weight": weight}
        if method == "proxy-fda":
            options["n_proxies"] = n_proxies
        self.loss = build_regularizer("proxy-fda" if method == "proxy-fda" else "fda", **options)
        self.loss.record_stats = False
        self.optimizer = torch.optim.Adam([*self.net.parameters(), *self.head.parameters()], lr=TOY_LR)
        generator = getattr(self.loss, "generator_parameters", list)()
        self.generator_optimizer = torch.optim.Adam(generator, lr=GENERATOR_LR) if generator else None
        self.steps = 0

    def positions(self) -> torch.Tensor:
        """The fine-tuned layout [N, 2] (with gradient to the network)."""
        return self.pre + self.net(self.pre)

    def step(self, n: int = 1) -> None:
        """``n`` full-batch updates: task cross-entropy, plus the method's loss (a naive run computes
        none; its FDA module is only there to be looked at)."""
        target = lift(self.pre)
        for _ in range(n):
            z = lift(self.positions())
            loss = F.cross_entropy(TASK_SCALE * self.head(z), self.task, label_smoothing=TASK_SMOOTHING)
            terms = {} if self.method == "naive" else self.loss(z, target, return_terms=True)
            loss = loss + terms.get("loss", 0.0) + terms.get("generator", 0.0)
            self.optimizer.zero_grad(set_to_none=True)
            if self.generator_optimizer is not None:
                self.generator_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.generator_optimizer is not None:
                self.generator_optimizer.step()
            self.steps += 1

    def layout(self) -> np.ndarray:
        with torch.no_grad():
            return self.positions().numpy()

    def scores(self) -> dict[str, float]:
        """Task accuracy and mean overlap@k of the fine-tuned kNN graph with the pre-trained one."""
        with torch.no_grad():
            z = lift(self.positions())
            accuracy = float((self.head(z).argmax(1) == self.task).float().mean())
        now = knn_graph(z.numpy(), self.k).indices
        return {"accuracy": accuracy, "overlap": float(knn_overlap(self.problem.neighbours(self.k), now).mean())}

    def forces(self, anchor: int) -> "AnchorForces":
        """What the FDA-family loss does for one anchor, now: on every other point, the gradient of the
        anchor's own loss term (``anchor_loss``) with respect to that point's position, negated (the way
        a step moves it), and the anchor's proxies placed in the plane. Read from the loss module itself;
        for a naive run, the FDA module shows what FDA would do."""
        if not 0 <= anchor < self.problem.n:
            raise ProxyFDAError(f"anchor must be a point index in [0, {self.problem.n - 1}], got {anchor}")
        with torch.no_grad():
            positions = self.positions()
        positions.requires_grad_(True)
        self.loss.record_stats = self.loss.record_detail = True
        try:
            terms = self.loss(lift(positions), lift(self.pre), return_terms=True)
            (gradient,) = torch.autograd.grad(terms["anchor_loss"][anchor], positions)
            records = self.loss.records
        finally:
            self.loss.record_stats = self.loss.record_detail = False
        b = self.problem.n
        frame = pd.DataFrame({"point": np.arange(b), "x": positions.detach().numpy()[:, 0],
                              "y": positions.detach().numpy()[:, 1], "dx": -gradient[:, 0].numpy(),
                              "dy": -gradient[:, 1].numpy(), "positive": records["pair_positive"][anchor, :b].numpy(),
                              "weight": records["pair_weight"][anchor, :b].numpy()})
        proxies = drop(records["proxies"][anchor].numpy()) if "proxies" in records else np.zeros((0, 2))
        return AnchorForces(anchor, frame.drop(index=anchor), frame.loc[anchor, ["dx", "dy"]].to_numpy(), proxies,
                            float(records["anchor_threshold"][anchor]))


@dataclass(frozen=True)
class AnchorForces:
    """``pairs``: every other point with its position, its move under the anchor's loss (dx, dy), whether
    it is a pre-trained neighbour and its signed weight; ``proxies`` [2P, 2]: positive ones first;
    ``threshold``: the cosine the loss pulls positives above and pushes negatives below."""

    anchor: int
    pairs: pd.DataFrame
    anchor_move: np.ndarray  # [2]: how the anchor's own loss moves the anchor itself
    proxies: np.ndarray
    threshold: float
