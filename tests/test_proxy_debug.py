"""The proxy debugger: its library (`proxyfda.proxy_debug`) against the loss and brute force, and its page under AppTest."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT
from proxyfda import proxy_debug
from proxyfda.config import FinetuneConfig
from proxyfda.data import ImageSet
from proxyfda.training import finetune

B, D = 24, 16


def synthetic_batch(seed: int = 0, ft_noise: float = 0.3) -> proxy_debug.DebugBatch:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), 4)
    centres = rng.normal(size=(6, D))
    pre = centres[labels] + 0.5 * rng.normal(size=(B, D))
    ft = pre + ft_noise * rng.normal(size=(B, D))
    images = ImageSet([f"img{i}.png" for i in range(B)], labels, [str(c) for c in range(6)], "synthetic")
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return proxy_debug.DebugBatch(images, unit(pre), unit(ft), "start", 0, {"k": 4})


def test_the_inspection_reads_the_loss_records_and_they_agree_with_brute_force():
    batch = synthetic_batch()
    found = proxy_debug.inspect_batch(batch, {"n_proxies": 3})
    # the kNN graph from proxyfda.knn names the positives the loss used
    for i in range(B):
        assert set(found.graph.indices[i]) == set(np.flatnonzero(found.records["pair_positive"][i, :B]))
    pairs = found.pairs(5)
    assert len(pairs) == B - 1 and pairs.positive.sum() == 4 and 5 not in set(pairs.image)
    np.testing.assert_allclose(pairs.ft_cos, batch.ft[5] @ batch.ft[pairs.image].T, atol=1e-5)
    others = [j for j in range(B) if j != 5]  # nearest in the pre-trained space first, by brute force
    nearest_first = sorted(others, key=lambda j: -float(batch.pre[5] @ batch.pre[j]))
    assert list(pairs.image) == nearest_first
    np.testing.assert_allclose(pairs.pre_cos, [batch.pre[5] @ batch.pre[j] for j in nearest_first], atol=1e-6)
    assert (pairs.weight[pairs.positive] >= 0).all() and (pairs.weight[~pairs.positive] <= 0).all()
    proxies = found.proxies(5)
    assert list(proxies.side) == ["positive"] * 3 + ["negative"] * 3
    positives = set(pairs.image[pairs.positive])
    assert all(set(m) <= positives for m in proxies.members[:3])  # a positive proxy pools positives only
    # each recorded proxy is the pooled combination its weights say, and its cosine to the anchor is in the pairs
    pooled = found.records["proxy_pooling"][5] @ batch.ft
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(found.records["proxies"][5], pooled, atol=1e-5)
    np.testing.assert_allclose(proxies.ft_cos, pooled @ batch.ft[5], atol=1e-5)
    # diversity: mean pairwise chordal distance between an anchor's same-side proxies
    side = pooled[:3]
    brute = np.mean([np.linalg.norm(side[a] - side[b]) for a in range(3) for b in range(3) if a != b])
    assert found.records["proxy_diversity"][5, 0] == pytest.approx(brute, abs=1e-3)
    terms = found.anchor_terms(5)
    assert terms["loss"] == pytest.approx(terms["loss_pos"] + terms["loss_neg"], rel=1e-5)
    assert np.mean(found.records["anchor_loss"]) == pytest.approx(found.terms["fda"], rel=1e-5)
    points = found.map_points()
    assert len(points) == B + B * 6 and set(points.kind) == {"real", "proxy +", "proxy −"}


def test_warming_the_generator_and_alpha_change_the_proxies():
    batch = synthetic_batch()
    cold = proxy_debug.inspect_batch(batch, {"n_proxies": 3})
    warm = proxy_debug.inspect_batch(batch, {"n_proxies": 3}, generator_steps=30)
    assert "30 steps" in warm.generator and cold.terms["generator"] > warm.terms["generator"]
    effects = proxy_debug.option_effects(batch, "alpha", values=[0.0, 20.0], options={"n_proxies": 3},
                                         generator_steps=40)
    assert list(effects.alpha) == [0.0, 20.0]
    # the variance term spreads an anchor's proxies apart
    assert effects.proxy_diversity[1] > effects.proxy_diversity[0]
    with pytest.raises(Exception, match="option effects are shown for"):
        proxy_debug.option_effects(batch, "tau")


@pytest.fixture(scope="module")
def proxy_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    config = FinetuneConfig(method="proxy-fda", data="digits:train", eval_data="digits:test", image_size=32, steps=4,
                            eval_every=2, batch_size=32, classes_per_batch=8, eval_size=100,
                            reg_options={"k": 6, "n_proxies": 2})
    finetune(config, runs / "proxy")
    return runs


def test_a_run_keeps_its_generator_and_logs_proxy_health(proxy_run):
    from proxyfda.runs import Run

    run = Run.open(proxy_run / "proxy")
    state = run.checkpoint_state()
    assert any(name.startswith("generator.") for name in state["regularizer"])
    evals = run.history().query("kind == 'eval' and step > 0")
    assert evals.proxy_diversity.notna().all() and (evals.proxy_nn_dist > 0).all()
    batch = proxy_debug.load_batch(proxy_run / "proxy", data="digits:test", batch_size=32, seed=1)
    assert batch.step == 4 and batch.generator_state is not None and len(batch.pre) == 32
    assert not np.allclose(batch.pre, batch.ft)  # the run's checkpoint, not the base
    found = proxy_debug.inspect_batch(batch)
    assert found.generator == "the run's, saved at step 4" and found.n_proxies == 2
    loaded = proxy_debug.inspect_batch(batch, {"n_proxies": 3})
    assert "does not fit" in loaded.generator


def test_the_page_shows_an_anchor_and_follows_a_new_choice(proxy_run, monkeypatch):
    monkeypatch.setenv("PROXYFDA_RUNS", str(proxy_run))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.switch_page("../pages/proxy_debugger.py")
    at.session_state["debug.data"] = "digits:test"
    at.session_state["debug.batch"] = 32
    at.session_state["debug.warm"] = 10
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Proxy debugger"]
    states = at.selectbox(key="debug.state")
    assert any(option.startswith("proxy (proxy-fda") for option in states.options)
    assert "Anchor 0" in " ".join(m.value for m in at.markdown)
    at.selectbox(key="debug.anchor").select(7).run()
    assert not at.exception
    assert "Anchor 7" in " ".join(m.value for m in at.markdown) and at.query_params["anchor"] in ("7", ["7"])
    states.select(next(o for o in states.options if o.startswith("proxy ("))).run()
    assert not at.exception
    assert "the run's, saved at step 4" in " ".join(c.value for c in at.caption)
    at.button(key="debug.compare").click().run()
    assert not at.exception and len(at.dataframe) >= 1
