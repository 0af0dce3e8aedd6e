"""The linked maps' figure, built as a pure function: which value each point carries, where it is drawn, what its
hover says and how the selection and the focus are marked, checked point by point."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from app.linked_maps import MAP_POINTS, QUALITATIVE, map_figure, selection_ids

N = 12
CLASSES = ["cat", "dog", "eel"]


@pytest.fixture
def points():
    rng = np.random.default_rng(2)
    return dict(coords=rng.normal(size=(N, 2)), labels=np.arange(N) % 3, overlap=rng.random(N),
                l2=rng.random(N) + 0.5)


def figure(points, **options):
    data = {key: points[key] for key in ("labels", "overlap", "l2")}
    return map_figure(points["coords"], "A", class_names=CLASSES, **data, **options)


def test_each_drawn_point_carries_its_own_row_position_and_hover(points):
    shown = np.array([1, 4, 5, 9])
    trace = figure(points, shown=shown).data[0]
    assert list(trace.customdata) == [1, 4, 5, 9]
    np.testing.assert_array_equal(trace.x, points["coords"][shown, 0])
    np.testing.assert_array_equal(trace.y, points["coords"][shown, 1])
    for text, i in zip(trace.text, shown):
        assert text == (f"id {i} · {CLASSES[i % 3]}<br>overlap@k {points['overlap'][i]:.2f} · "
                        f"L2 drift {points['l2'][i]:.3f}")
    assert trace.marker.size == 5


@pytest.mark.parametrize("color_by", ["overlap@k", "L2 drift", "class"])
def test_the_colour_is_the_chosen_value_of_each_point(points, color_by):
    shown = np.array([0, 2, 3, 7, 11])
    marker = figure(points, shown=shown, color_by=color_by).data[0].marker
    if color_by == "class":
        np.testing.assert_array_equal(marker.color, points["labels"][shown])
        assert (marker.cmin, marker.cmax) == (-0.5, 2.5) and list(marker.colorbar.ticktext) == CLASSES
        assert [step[1] for step in marker.colorscale] == [QUALITATIVE[0]] * 2 + [QUALITATIVE[1]] * 2 + \
            [QUALITATIVE[2]] * 2
        assert [step[0] for step in marker.colorscale] == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    elif color_by == "L2 drift":
        np.testing.assert_array_equal(marker.color, points["l2"][shown])
        assert marker.colorbar.title.text == "L2"
    else:
        np.testing.assert_array_equal(marker.color, points["overlap"][shown])
        assert (marker.cmin, marker.cmax, marker.colorbar.title.text) == (0.0, 1.0, "overlap@k")


def test_without_l2_drift_the_map_colours_by_overlap(points):
    """Spaces of different widths have no L2 drift (NaN): the map falls back to overlap@k rather than blank."""
    marker = figure({**points, "l2": np.full(N, np.nan)}, color_by="L2 drift").data[0].marker
    np.testing.assert_array_equal(marker.color, points["overlap"])
    assert marker.colorbar.title.text == "overlap@k"


def test_the_selection_is_marked_at_its_positions_among_the_drawn_points(points):
    shown = np.array([1, 4, 5, 9])
    trace = figure(points, shown=shown, selected=[9, 2, 4]).data[0]  # 2 is not drawn
    assert list(trace.selectedpoints) == [3, 1]
    assert trace.unselected.marker.opacity < trace.selected.marker.opacity
    assert figure(points).data[0].selectedpoints is None


def test_the_focus_is_a_star_ringed_by_its_neighbours_in_this_space(points):
    fig = figure(points, focus=6, focus_neighbours=[2, 8])
    points_trace, ring, star = fig.data
    np.testing.assert_array_equal(ring.x, points["coords"][[2, 8], 0])
    np.testing.assert_array_equal(ring.y, points["coords"][[2, 8], 1])
    assert (star.x[0], star.y[0]) == tuple(points["coords"][6]) and star.marker.symbol == "star"
    assert len(figure(points).data) == 1


def test_a_crowded_map_draws_smaller_points():
    n = MAP_POINTS + 1
    coords = np.zeros((n, 2))
    trace = map_figure(coords, "A", labels=np.zeros(n, int), class_names=["x"], overlap=np.zeros(n),
                       l2=np.zeros(n)).data[0]
    assert trace.marker.size == 3


def test_the_rest_of_a_sample_is_drawn_at_random_by_its_seed():
    """Beyond what must be drawn (kept rows, the most drifted), the sample is a uniform draw of the other rows:
    the same for the same seed, another for another seed, spread over every part of the set."""
    from app.linked_maps import DRIFTED_SHARE, map_sample

    overlap = np.linspace(0.0, 1.0, 30_000)  # the most drifted are the first rows
    first, again, other = (map_sample(overlap, [29_999], budget=1000, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    drifted = int(1000 * DRIFTED_SHARE)
    rest = first[drifted:-1]
    assert len(rest) == 1000 - drifted - 1 and not np.array_equal(rest, other[drifted:-1])
    counts = np.histogram(rest, bins=3, range=(drifted, 29_999))[0]
    assert counts.min() > 0.25 * len(rest)  # about a third in each third of the rows


def test_a_sample_is_every_point_up_to_its_budget_and_exactly_its_budget_beyond():
    from app.linked_maps import DRIFTED_SHARE, map_sample

    np.testing.assert_array_equal(map_sample(np.random.default_rng(0).random(100), budget=100), np.arange(100))
    overlap = np.full(300, 0.5)  # all tied: the most drifted are the first rows (a stable order)
    shown = map_sample(overlap, budget=100)
    assert len(shown) == 100 and set(range(int(100 * DRIFTED_SHARE))) <= set(shown.tolist())
    np.testing.assert_array_equal(shown, map_sample(overlap, budget=100, seed=0))  # seed 0 by default
    many = list(range(50, 250))  # more rows must be drawn than the budget: those, and nothing at random
    assert map_sample(overlap, many, budget=100).tolist() == sorted({*range(10), *many})


def test_selection_parser_reads_row_ids_from_custom_data():
    event = {"selection": {"points": [{"curve_number": 0, "point_index": 12, "customdata": 12},
                                      {"curve_number": 0, "point_index": 3, "customdata": 3},
                                      {"curve_number": 1, "point_index": 0, "customdata": [12]},
                                      {"curve_number": 2, "point_index": 0}]}}
    assert selection_ids(event) == [12, 3]
    assert selection_ids(None) == [] and selection_ids({"selection": {"points": []}}) == []
    assert selection_ids(event["selection"]) == [12, 3]  # the selection itself, without its wrapper
    # Streamlit hands back attribute dictionaries: read by attribute; a point without a row id is skipped
    points = [{"customdata": 5}, {"curve_number": 1}, {"customdata": [8]}]
    assert selection_ids(SimpleNamespace(selection=SimpleNamespace(points=points))) == [5, 8]
    assert selection_ids(SimpleNamespace(selection=SimpleNamespace())) == []
    assert selection_ids(SimpleNamespace()) == []


def test_map_figure_keeps_every_point_in_one_trace_with_row_ids():
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(30, 2))
    labels = np.arange(30) % 3
    fig = map_figure(coords, "A", labels=labels, class_names=["a", "b", "c"], overlap=rng.random(30),
                     l2=rng.random(30), color_by="class", selected=[2, 9], focus=4, focus_neighbours=[1, 2])
    points = fig.data[0]
    assert len(points.x) == 30 and list(points.customdata) == list(range(30))
    assert list(points.selectedpoints) == [2, 9]
    assert [t.name for t in fig.data] == ["points", "neighbours", "focus"]


def test_the_most_drifted_among_tied_rows_are_the_first_rows():
    from app.linked_maps import DRIFTED_SHARE, map_sample

    overlap = np.random.default_rng(0).integers(0, 4, 3000) / 3  # four levels: many ties at the cut
    shown = set(map_sample(overlap, budget=1000).tolist())
    drifted = np.flatnonzero(overlap == 0)[: int(1000 * DRIFTED_SHARE)]  # lowest overlap, then lowest row id
    assert set(drifted.tolist()) <= shown
