"""What every regulariser shares (`proxyfda.losses.base`): its records, its option names and the input checks,
each against a case whose answer is written out."""

import math

import pytest
import torch

from proxyfda.errors import ProxyFDAError
from proxyfda.losses.base import (RecordingLoss, check_feature_pair, check_int, check_number, keyword_names,
                                  unit_rows)


class Scaled(RecordingLoss):
    """loss = scale · Σx²; also a per-row term, and the input itself as a detail."""

    def __init__(self, scale: float = 2.0, *extra, shift: int = 0, **more) -> None:
        super().__init__()
        self.scale = scale

    def compute(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.record_details(seen=x)
        if x.shape[0] > 1:
            self.record("first_row", x[0])
        return {"loss": self.scale * x.square().sum(), "per_row": x.square().sum(1)}


def test_forward_returns_the_loss_or_every_term():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]], requires_grad=True)
    loss = Scaled(scale=0.5)
    assert loss(x).item() == 7.0
    terms = loss(x, return_terms=True)
    assert set(terms) == {"loss", "per_row"} and terms["per_row"].tolist() == [5.0, 9.0]
    assert terms["loss"].requires_grad  # the terms themselves, not the records' copies
    assert loss(x=x).item() == 7.0  # inputs passed by name reach compute too


def test_records_are_floats_for_scalars_and_detached_cpu_copies_otherwise():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]], requires_grad=True)
    loss = Scaled(scale=0.5)
    loss(x)
    r = loss.records
    assert r["loss"] == 7.0 and type(r["loss"]) is float
    assert r["per_row"].tolist() == [5.0, 9.0] and not r["per_row"].requires_grad
    assert r["first_row"].tolist() == [1.0, 2.0] and r["first_row"].device.type == "cpu"
    with torch.no_grad():
        x[0, 0] = 100.0
    assert r["first_row"].tolist() == [1.0, 2.0]  # a copy: later changes to the input do not reach it
    assert "seen" not in r  # details only when asked for


def test_each_call_starts_its_records_afresh_and_details_need_both_switches():
    loss = Scaled()
    loss(torch.ones(2, 2))
    assert "first_row" in loss.records
    loss(torch.ones(1, 2))  # one row: no first_row this time, and the old one is gone
    assert set(loss.records) == {"loss", "per_row"}
    loss.record_detail = True
    loss(torch.ones(1, 2))
    assert loss.records["seen"].tolist() == [[1.0, 1.0]]
    loss.record_stats = False
    loss(torch.ones(2, 2))
    assert loss.records == {}
    assert Scaled().diagnostics() == {}


def test_option_names_are_the_keywords_a_constructor_takes():
    assert Scaled.option_names() == ["scale", "shift"]  # not self, *extra or **more

    def factory(a, b=1, /, c=2, *, d, **e):
        pass

    assert keyword_names(factory) == ["c", "d"]  # positional-only a and b cannot be passed by name


def test_unit_rows_keeps_wide_floats_and_widens_half_ones():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    unit = unit_rows(x)
    assert unit.dtype == torch.float64 and unit.tolist() == [[0.6, 0.8], [0.0, 0.0]]  # a zero row stays 0, not NaN
    for half in (torch.float16, torch.bfloat16):
        out = unit_rows(x.to(half))
        assert out.dtype == torch.float32 and out[0].tolist() == pytest.approx([0.6, 0.8], abs=1e-3)
    assert unit_rows(torch.tensor([[1e-9, 0.0]]))[0].tolist() == pytest.approx([0.1, 0.0])  # norm floored at 1e-8


def test_a_feature_pair_comes_back_unit_and_with_the_pretrained_side_detached():
    feats = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
    pre = torch.tensor([[1.0, 0.0], [0.0, 5.0]], requires_grad=True)
    x, x_pre = check_feature_pair(feats, pre)
    torch.testing.assert_close(x, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    assert x.requires_grad
    assert x_pre.tolist() == [[1.0, 0.0], [0.0, 1.0]] and not x_pre.requires_grad


@pytest.mark.parametrize("feats, pre, min_batch, says", [
    ([[1.0, 2.0]], "same", 1, "feats must be a float tensor [batch, dim], got list; pass the pooled features"),
    (torch.ones(2, 2, dtype=torch.long), "same", 1, "feats must be a float tensor [batch, dim], got (2, 2)"),
    (torch.ones(4), "same", 1, "feats must be a float tensor [batch, dim], got (4,)"),
    (torch.ones(2, 2), torch.ones(2, 2, 1), 1, "feats_pre must be a float tensor [batch, dim], got (2, 2, 1)"),
    (torch.tensor([[1.0, math.nan]]), "same", 1, "feats contains NaN or inf"),
    (torch.ones(2, 2), torch.tensor([[1.0, 1.0], [math.inf, 0.0]]), 1, "feats_pre contains NaN or inf"),
    (torch.ones(2, 3), torch.ones(3, 3), 1, "feats (2, 3) and feats_pre (3, 3) must have the same shape"),
    (torch.ones(2, 3), "same", 3, "the batch has 2 image(s); this loss needs at least 3"),
])
def test_a_bad_feature_pair_is_named(feats, pre, min_batch, says):
    with pytest.raises(ProxyFDAError) as error:
        check_feature_pair(feats, feats if isinstance(pre, str) else pre, min_batch=min_batch)
    assert str(error.value).startswith(says)


def test_the_default_smallest_batch_is_two():
    check_feature_pair(torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ProxyFDAError, match=r"^the batch has 1 image\(s\); this loss needs at least 2$"):
        check_feature_pair(torch.ones(1, 3), torch.ones(1, 3))


def test_numbers_are_checked_against_their_bounds():
    assert check_number(3, "tau") == 3.0 and type(check_number(3, "tau")) is float
    assert check_number(0.0, "tau", low=0.0) == 0.0  # a closed bound admits its own value
    assert check_number(2.0, "tau", high=2.0) == 2.0
    refused = [
        (dict(value=True), "tau must be a finite number, got True"),
        (dict(value="1"), "tau must be a finite number, got '1'"),
        (dict(value=math.nan), "tau must be a finite number, got nan"),
        (dict(value=-math.inf), "tau must be a finite number, got -inf"),
        (dict(value=-0.5, low=0.0), "tau must be >= 0.0, got -0.5"),
        (dict(value=0.0, low=0.0, low_open=True), "tau must be > 0.0, got 0.0"),
        (dict(value=2.5, high=2.0), "tau must be <= 2.0, got 2.5"),
    ]
    for arguments, says in refused:
        with pytest.raises(ProxyFDAError) as error:
            check_number(name="tau", **arguments)
        assert str(error.value) == says
    assert check_number(1e-9, "tau", low=0.0, low_open=True) == 1e-9


def test_integers_are_checked_against_their_lower_bound():
    assert check_int(1, "k") == 1 and check_int(0, "k", low=0) == 0
    for value, low, says in [(0, 1, "k must be an integer >= 1, got 0"), (True, 0, "k must be an integer >= 0, got True"),
                             (3.0, 1, "k must be an integer >= 1, got 3.0"), (-1, 0, "k must be an integer >= 0, got -1")]:
        with pytest.raises(ProxyFDAError) as error:
            check_int(value, "k", low=low)
        assert str(error.value) == says
