"""The teaching toy: the real losses on 2-D points, checked against finite differences, and its page under AppTest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from proxyfda.teaching import ToyRun, drop, lift, toy_problem


def test_the_toy_problem_and_its_lift():
    problem = toy_problem(classes=4, per_class=6, seed=1)
    assert problem.pre.shape == (24, 2) and set(problem.labels) == {0, 1, 2, 3}
    assert (problem.task[problem.labels == 0] == problem.task[problem.labels == 2][0]).all()  # opposite classes pair
    assert problem.task[problem.labels == 0][0] != problem.task[problem.labels == 1][0]
    points = torch.from_numpy(problem.pre)
    np.testing.assert_allclose(drop(lift(points).numpy()), problem.pre, atol=1e-5)
    with pytest.raises(Exception, match="even number of classes"):
        toy_problem(classes=3)


def test_naive_fine_tuning_breaks_more_neighbourhoods_than_proxy_fda():
    problem = toy_problem()
    naive, held = ToyRun(problem, "naive"), ToyRun(problem, "proxy-fda")
    np.testing.assert_allclose(naive.layout(), problem.pre)  # the network starts as the identity
    assert naive.scores()["overlap"] == 1.0
    for run in (naive, held):
        run.step(300)
    a, b = naive.scores(), held.scores()
    assert a["accuracy"] == b["accuracy"] == 1.0  # both learn the task ...
    assert b["overlap"] > a["overlap"] + 0.1  # ... and Proxy-FDA keeps clearly more of the pre-trained kNN graph


def test_the_arrows_are_the_anchor_loss_gradient():
    problem = toy_problem(per_class=6)
    proxies = ToyRun(problem, "proxy-fda", k=3).forces(5).proxies
    assert proxies.shape == (4, 2)  # 2 per side, placed in the plane
    run = ToyRun(problem, "fda", k=3)  # FDA: differentiable throughout (Proxy-FDA holds its pooling fixed)
    run.step(20)
    forces = run.forces(5)
    assert len(forces.pairs) == problem.n - 1 and forces.pairs.positive.sum() == 3
    assert set(forces.pairs.point[forces.pairs.positive]) == set(problem.neighbours(3)[5])
    # central finite difference of the anchor's own loss w.r.t. one neighbour's x coordinate
    j = int(forces.pairs.point[forces.pairs.positive].iloc[0])
    positions = run.layout().astype(np.float64)
    loss = run.loss.double()

    def anchor_loss(shift: float) -> float:
        moved = positions.copy()
        moved[j, 0] += shift
        with torch.no_grad():
            return float(loss(lift(torch.from_numpy(moved)), lift(torch.from_numpy(problem.pre).double()),
                              return_terms=True)["anchor_loss"][5])

    eps = 1e-5
    numeric = (anchor_loss(eps) - anchor_loss(-eps)) / (2 * eps)
    assert -forces.pairs.set_index("point").dx[j] == pytest.approx(numeric, rel=1e-3, abs=1e-7)
    # a pull moves a neighbour towards the anchor
    row = forces.pairs.set_index("point").loc[j]
    towards = positions[5] - positions[j]
    assert np.dot([row.dx, row.dy], towards) > 0


def test_the_page_steps_both_runs_and_moves_the_anchor():
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.switch_page("../pages/teaching.py")
    at.run()
    assert not at.exception, at.exception
    assert "Teaching" in at.title[0].value
    titles = lambda: [c.proto.spec for c in at.get("plotly_chart")]  # noqa: E731
    assert len(at.get("plotly_chart")) == 3 and all("step 0" in t for t in titles()[1:])
    at.button(key="teach.step100").click().run()
    assert not at.exception and all("step 100" in t for t in titles()[1:])
    kept = [m.value for m in at.metric if m.label.startswith("neighbours kept")]
    assert len(kept) == 2 and kept[0] != "100%"
    at.slider(key="teach.anchor").set_value(10).run()
    assert not at.exception and all("step 100" in t for t in titles()[1:])  # moving the anchor does not reset
    at.button(key="teach.reset").click().run()
    assert all("step 0" in t for t in titles()[1:])


def test_settings_and_the_toy_survive_a_visit_to_another_page():
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.switch_page("../pages/teaching.py")
    at.run()
    at.slider(key="teach.weight").set_value(3.5).run()
    at.button(key="teach.step10").click().run()
    at.switch_page("../pages/live_finetune.py")
    at.run()
    at.switch_page("../pages/teaching.py")
    at.run()
    assert not at.exception
    assert at.slider(key="teach.weight").value == 3.5
    assert all("step 10" in c.proto.spec for c in at.get("plotly_chart")[1:])
