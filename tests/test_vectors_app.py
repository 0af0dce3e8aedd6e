"""The Drift Explorer's "Embedding files" source under AppTest: two files the user already has (and a labels
file, or an image set), a report with ids instead of thumbnails, the address carrying the files, and bad
files refused with a sentence. No encoder runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app.drift_controls import FILES_SOURCE, SOURCE_KEY, VEC_A, VEC_B, VEC_IMAGES
from conftest import ROOT

PAGE = str(ROOT / "pages" / "drift_explorer.py")
N = 200


@pytest.fixture
def files(tmp_path):
    """Two related spaces of different widths, as .npy and a parquet list column, and a labels file."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(N, 12)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    pd.DataFrame({"emb": list(a[:, :8] + 0.4 * rng.normal(size=(N, 8)))}).to_parquet(tmp_path / "b.parquet")
    (tmp_path / "labels.txt").write_text("\n".join(np.array(["cat", "dog"])[rng.integers(0, 2, N)]) + "\n")
    return tmp_path


def page(**state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    # as the Source radio leaves it when switched to embedding files: every row
    for key, value in {SOURCE_KEY: FILES_SOURCE, "drift.cfg.n": 0, "drift.cfg.k": 5, **state}.items():
        at.session_state[key] = value
    return at.run()


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def test_two_embedding_files_give_a_report_without_thumbnails(files):
    at = page(**{VEC_A: str(files / "a.npy"), VEC_B: str(files / "b.parquet"),
                 "drift.cfg.labels": str(files / "labels.txt")})
    assert not at.exception and not at.error
    assert [m.label for m in at.metric][:1] == ["overlap@5"]
    assert f"N = {N} images" in texts(at.caption)
    assert "without images, so each is shown by its id and class instead of a thumbnail" in texts(at.info)
    assert "Point " in texts(at.markdown) and "class **" in texts(at.markdown)
    assert not at.get("image")  # no picture anywhere: ids and classes instead
    assert at.query_params["pretrained"] == f"vectors:{files / 'a.npy'}"
    assert at.query_params["data"] == f"rows:{N}" and at.query_params["n"] == "0"
    assert at.query_params["labels"] == str(files / "labels.txt")
    frame = at.dataframe[0].value  # the most drifted table, with the labels file's classes
    assert set(frame["class"]) <= {"cat", "dog"}


def test_a_link_with_embedding_files_opens_the_files_form(files):
    at = AppTest.from_file(PAGE, default_timeout=300)
    at.query_params.update({"pretrained": f"vectors:{files / 'a.npy'}", "finetuned": f"vectors:{files / 'b.parquet'}",
                            "data": f"rows:{N}", "n": "0", "k": "4", "labels": str(files / "labels.txt")})
    at.run()
    assert not at.exception and not at.error
    assert at.session_state[SOURCE_KEY] == FILES_SOURCE
    assert at.text_input(key=VEC_A).value == str(files / "a.npy") and at.text_input(key=VEC_IMAGES).value == ""
    assert at.text_input(key="drift.cfg.labels").value == str(files / "labels.txt")
    assert (at.number_input(key="drift.cfg.n").value, at.slider(key="drift.cfg.k").value) == (0, 4)
    n, k = at.number_input(key="drift.cfg.n").proto, at.slider(key="drift.cfg.k").proto  # as the images form's
    assert (n.has_min, n.min, n.has_max, k.min, k.max) == (True, 0, False, 1, 50)
    assert at.text_input(key=VEC_B).value == str(files / "b.parquet")
    assert [m.label for m in at.metric][:1] == ["overlap@4"]


def test_embedding_files_with_the_images_they_embed_show_thumbnails(files):
    x = np.random.default_rng(1).normal(size=(359, 6)).astype(np.float32)  # digits:test, one row per image
    np.save(files / "d.npy", x)
    np.save(files / "e.npy", x[:, ::-1].copy())
    at = page(**{VEC_A: str(files / "d.npy"), VEC_B: str(files / "e.npy"), VEC_IMAGES: "digits:test",
                 "drift.cfg.n": 120})
    assert not at.exception and not at.error
    assert "without images" not in texts(at.info) and at.get("image")
    assert at.query_params["data"] == "digits:test"


@pytest.mark.parametrize("state, message", [
    (lambda f: {VEC_A: str(f / "a.npy")}, "Give the two embedding files in the sidebar"),
    (lambda f: {VEC_A: str(f / "a.npy"), VEC_B: str(f / "short.npy")},
     "has 200 rows but '{f}/short.npy' has 150: both must hold the same points in the same order"),
    (lambda f: {VEC_A: str(f / "missing.npy"), VEC_B: str(f / "a.npy")},
     "the embedding file '{f}/missing.npy' does not exist or is not a file"),
    (lambda f: {VEC_A: "/etc/embeddings.npy", VEC_B: str(f / "a.npy")},  # the guard, before the file is read
     "'/etc/embeddings.npy' is outside the folders this app may read"),
    (lambda f: {VEC_A: str(f / "a.npy"), VEC_B: str(f / "a.npy"), "drift.cfg.labels": "/etc/labels.txt"},
     "'/etc/labels.txt' is outside the folders this app may read"),
])
def test_bad_embedding_files_are_refused_with_a_sentence(files, state, message):
    np.save(files / "short.npy", np.ones((150, 4), np.float32))
    at = page(**state(files))
    assert not at.exception
    assert message.format(f=files) in texts(at.error) + texts(at.info)
    assert not at.metric


def test_a_large_set_is_announced_sampled_and_paged(files, monkeypatch):
    """Past the exact-search limit the approximate graphs are announced with their recall; past the map
    budget the maps draw a stated sample until 'Draw every point' is ticked; the table pages over all."""
    import json

    import proxyfda.knn as knn

    n = 700
    rng = np.random.default_rng(3)
    a = (rng.normal(size=(10, 16))[rng.integers(0, 10, n)] + 0.5 * rng.normal(size=(n, 16))).astype(np.float32)
    np.save(files / "big_a.npy", a)
    np.save(files / "big_b.npy", a + 0.4 * rng.normal(size=a.shape).astype(np.float32))
    monkeypatch.setattr(knn, "EXACT_MAX_N", 300)
    monkeypatch.setattr("proxyfda.drift.EXACT_MAX_N", 300)
    monkeypatch.setattr("app.linked_maps.MAP_POINTS", 250)
    coords = rng.normal(size=(n, 2)).astype(np.float32)
    monkeypatch.setattr("proxyfda.projection.cached_pair", lambda *args, **kwargs: (coords, coords))
    at = page(**{VEC_A: str(files / "big_a.npy"), VEC_B: str(files / "big_b.npy"), "drift.cfg.k": 8})
    assert not at.exception and not at.error
    assert "approximate (faiss-hnsw) because N = 700 > 300" in texts(at.info)
    assert "The maps draw 250 of 700 points" in texts(at.caption)

    def drawn() -> list[int]:
        charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
        return [len(chart["data"][0]["customdata"]) for chart in charts if chart["data"][0].get("name") == "points"]

    assert drawn() == [250, 250]
    assert at.number_input(key="drift.page").label == "Page (of 14)"
    at.number_input(key="drift.page").set_value(14).run()
    assert "Points 651–700 of 700" in texts(at.caption)
    at.checkbox(key="drift.all_points").check().run()
    assert not at.exception and drawn() == [700, 700]
    assert "The maps draw" not in texts(at.caption)
