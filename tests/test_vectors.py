"""Embeddings users already have (proxyfda.vectors, the ``vectors:`` encoder spec, ``rows:N`` data, a labels
file): read from .npy, .parquet and .csv into the same report as `compute_drift` on the arrays, every bad
file refused with its name and the fix, and ``proxyfda drift --features-a/-b`` end to end. No encoder runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from proxyfda.cli import main
from proxyfda.config import DriftConfig
from proxyfda.data import load_images
from proxyfda.drift import compute_drift, run_drift
from proxyfda.encoders import create_encoder, spec_paths
from proxyfda.errors import ProxyFDAError
from proxyfda.vectors import load_labels, load_vectors

N, K = 240, 5
CLASSES = np.array(["cat", "dog", "eel"])


@pytest.fixture(scope="module")
def arrays():
    """Two related spaces of different widths (B: 12-d, A: 16-d) and a class name per point."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(N, 16)).astype(np.float32)
    b = (a[:, :12] + 0.5 * rng.normal(size=(N, 12))).astype(np.float32)
    return a, b, CLASSES[rng.integers(0, 3, N)]


def save_csv_strings(path, x, column="embedding"):
    pd.DataFrame({"id": np.arange(len(x)), column: [str(row.tolist()) for row in x]}).to_csv(path, index=False)
    return path


def save_parquet_lists(path, x, column="embedding"):
    pd.DataFrame({"id": np.arange(len(x)), column: list(x)}).to_parquet(path)
    return path


def same_metrics(got: dict, expected: dict) -> bool:
    """The same scores, the same omissions; numbers equal to float32 precision."""
    assert got.keys() == expected.keys() and got.get("omitted") == expected.get("omitted")
    return all(got[key] == pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, float) else got[key] == value
               for key, value in expected.items())


def report_of(a_spec: str, b_spec: str, n_rows: int, labels: str = "", **options):
    config = DriftConfig(pretrained=f"vectors:{a_spec}", finetuned=f"vectors:{b_spec}", data=f"rows:{n_rows}",
                         n=0, k=K, labels=labels, **options)
    return run_drift(config)


@pytest.mark.parametrize("fmt", ["npy", "parquet", "csv", "csv-wide", "parquet-wide"])
def test_each_format_gives_the_report_compute_drift_gives_on_the_arrays(tmp_path, arrays, fmt):
    a, b, names = arrays
    if fmt == "npy":
        np.save(tmp_path / "a.npy", a)
        np.save(tmp_path / "b.npy", b)
        files = tmp_path / "a.npy", tmp_path / "b.npy"
    elif fmt == "parquet":  # the one list column is found without naming it (an id column beside it)
        files = save_parquet_lists(tmp_path / "a.parquet", a), save_parquet_lists(tmp_path / "b.parquet", b)
    elif fmt == "csv":
        files = save_csv_strings(tmp_path / "a.csv", a), save_csv_strings(tmp_path / "b.csv", b)
    else:
        suffix = fmt.split("-")[0]
        files = []
        for name, x in (("a", a), ("b", b)):
            # as float64, whose text is exact (pandas writes float32 in its own shortest form)
            frame = pd.DataFrame(x.astype(np.float64), columns=[f"d{j}" for j in range(x.shape[1])])
            path = tmp_path / f"{name}.{suffix}"
            frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
            files.append(path)
    pd.DataFrame({"class": names}).to_csv(tmp_path / "labels.csv", index=False)
    images, report = report_of(str(files[0]), str(files[1]), N, labels=str(tmp_path / "labels.csv"))
    ids, class_names = load_labels(str(tmp_path / "labels.csv"))
    expected = compute_drift(a, b, ids, class_names, K)
    assert not images.has_images and len(images) == N
    assert report.class_names == ["cat", "dog", "eel"] and np.array_equal(report.labels, ids)
    # CSV text is read as float64 (its decimals need not be float32 values): the graphs are identical, the
    # Gram-based scores (accumulated in float32 for float32 input) agree to float32 precision
    assert same_metrics(report.metrics, expected.metrics)
    assert "mean_l2_drift" in report.metrics["omitted"]
    np.testing.assert_array_equal(report.graph_a.indices, expected.graph_a.indices)
    np.testing.assert_array_equal(report.overlap, expected.overlap)
    pd.testing.assert_frame_equal(report.class_table, expected.class_table)


def test_each_format_reads_back_the_array_that_was_saved(tmp_path):
    """Read directly, every layout gives back the numbers: float64 stays float64 (CSV and parquet), float32
    stays float32, and a vector cell may be written "[0.1, 0.2]", "[0.1 0.2]" or with blanks around it."""
    x = np.random.default_rng(3).normal(size=(7, 3))
    pd.DataFrame(x, columns=["u", "v", "w"]).to_csv(tmp_path / "wide.csv", index=False)
    pd.DataFrame(x, columns=["u", "v", "w"]).to_parquet(tmp_path / "wide.parquet")
    cells = [(" " if i % 2 else "") + (str(row.tolist()) if i % 3 else np.array2string(row, floatmode="unique"))
             for i, row in enumerate(x)]  # commas, numpy's blanks, and leading blanks
    pd.DataFrame({"name": list("abcdefg"), "emb": cells}).to_csv(tmp_path / "cells.csv", index=False)
    save_parquet_lists(tmp_path / "lists.parquet", x.astype(np.float32))
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    for source, want in (("wide.csv", x), ("wide.parquet", x), ("cells.csv", x), ("lists.parquet", x.astype(np.float32)),
                         ("x.npy", x.astype(np.float32))):
        got = load_vectors(str(tmp_path / source))
        assert got.dtype == want.dtype, source
        np.testing.assert_array_equal(got, want, err_msg=source)
    pd.DataFrame({"id": [1, 2], "e": ["  [1, 2]", " [3, 4]"]}).to_csv(tmp_path / "blank.csv", index=False)
    np.testing.assert_array_equal(load_vectors(str(tmp_path / "blank.csv")), [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("cells, says", [
    (["[1, 2]", "[3, 4"], r"row 1 of column 'v' in '.*' is '\[3, 4', not a vector like"),
    (["[1, 2]", "3, 4]"], r"row 1 of column 'v' in '.*' is '3, 4\]', not a vector like"),
    (["[]", "[ ]"], r"column 'v' of '.*' is empty \(shape \(2, 0\)\)"),
])
def test_a_vector_cell_must_be_one_bracketed_list(tmp_path, cells, says):
    pd.DataFrame({"v": cells}).to_csv(tmp_path / "v.csv", index=False)
    with pytest.raises(ProxyFDAError, match=says):
        load_vectors(f"{tmp_path / 'v.csv'}#v")


def test_a_named_column_a_sample_and_an_image_set(tmp_path, arrays):
    a, b, _ = arrays
    frame = pd.DataFrame({"before": list(a), "after": list(b)})
    frame.to_parquet(tmp_path / "both.parquet")
    with pytest.raises(ProxyFDAError, match=r"several vector columns \(before, after\).*both.parquet#before"):
        load_vectors(str(tmp_path / "both.parquet"))
    np.testing.assert_array_equal(load_vectors(f"{tmp_path / 'both.parquet'}#after"), b)
    # a class-balanced sample of the rows takes the same rows of both files
    config = DriftConfig(pretrained=f"vectors:{tmp_path / 'both.parquet'}#before",
                         finetuned=f"vectors:{tmp_path / 'both.parquet'}#after", data=f"rows:{N}", n=100, k=K)
    images, report = run_drift(config)
    expected = compute_drift(a[images.rows], b[images.rows], images.labels, images.class_names, K)
    assert len(images) == 100 and report.metrics == expected.metrics
    # an image set in the same order: its labels and thumbnails, its size must match
    digits = load_images("digits:test")
    x = np.random.default_rng(1).normal(size=(len(digits), 8))
    np.save(tmp_path / "d.npy", x)
    np.save(tmp_path / "e.npy", x + 0.1)
    config = DriftConfig(pretrained=f"vectors:{tmp_path / 'd.npy'}", finetuned=f"vectors:{tmp_path / 'e.npy'}",
                         data="digits:test", n=0, k=K)
    images, report = run_drift(config)
    assert images.has_images and report.class_names == digits.class_names
    np.testing.assert_array_equal(report.labels, digits.labels)
    with pytest.raises(ProxyFDAError, match=r"'.*d\.npy' has 359 rows but the image set digits:all has 1,797"):
        run_drift(config.replace(data="digits:all"))


def test_labels_files_of_each_kind(tmp_path):
    np.save(tmp_path / "ids.npy", np.array([7, 3, 7, 3, 9]))
    assert [a.tolist() if isinstance(a, np.ndarray) else a for a in load_labels(str(tmp_path / "ids.npy"))] == \
        [[1, 0, 1, 0, 2], ["3", "7", "9"]]
    (tmp_path / "names.txt").write_text("dog\ncat\ndog\n\n")
    ids, names = load_labels(str(tmp_path / "names.txt"))
    assert ids.tolist() == [1, 0, 1] and names == ["cat", "dog"]
    pd.DataFrame({"id": [0, 1, 2], "label": ["b", "a", "b"]}).to_parquet(tmp_path / "l.parquet")
    ids, names = load_labels(str(tmp_path / "l.parquet"))  # the column named "label" is taken
    assert ids.tolist() == [1, 0, 1] and names == ["a", "b"]
    pd.DataFrame({"x": [1, 2], "y2": ["a", "b"]}).to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(ProxyFDAError, match=r"'.*two\.csv' has several columns \(x, y2\): name the labels' column "
                                            r"as two\.csv#COLUMN"):
        load_labels(str(tmp_path / "two.csv"))
    assert load_labels(f"{tmp_path / 'two.csv'}#y2")[1] == ["a", "b"]
    pd.DataFrame({"label": ["a", None, "b"]}).to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(ProxyFDAError, match=r"^'.*gap\.csv' has 1 missing label\(s\) \(rows 1\): give every point a class"):
        load_labels(str(tmp_path / "gap.csv"))


def write_labels(path, content) -> str:
    """``content`` saved as ``path``'s type: an array to .npy, text to .txt, columns to .csv."""
    if path.suffix == ".npy":
        np.save(path, content)
    elif path.suffix == ".txt":
        path.write_text(content)
    else:
        pd.DataFrame(content).to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize("name, content, ids, names", [
    ("column.npy", np.array([[5], [2], [5]]), [1, 0, 1], ["2", "5"]),  # an [N, 1] array is one class per point
    ("one.npy", np.array([4]), [0], ["4"]),
    ("floats.npy", np.array([2.0, 10.0, 2.0]), [0, 1, 0], ["2", "10"]),  # whole floats are ids, ordered as numbers
    ("small.npy", np.array([3, 1], dtype=np.uint8), [1, 0], ["1", "3"]),
    ("numbers.txt", "10\n9\n10\n", [1, 0, 1], ["9", "10"]),
    ("words.npy", np.array(["b", "a"]), [1, 0], ["a", "b"]),
    ("only.csv", {"cls": [10, 9, 10]}, [1, 0, 1], ["9", "10"]),  # a single column is taken whatever its name
    ("flags.csv", {"flag": [True, False, True]}, [1, 0, 1], ["False", "True"]),
])
def test_labels_become_ids_in_the_order_of_their_names(tmp_path, name, content, ids, names):
    got_ids, got_names = load_labels(write_labels(tmp_path / name, content))
    assert got_ids.dtype == np.int64 and got_ids.tolist() == ids and got_names == names


@pytest.mark.parametrize("source, content, message", [
    ("wide.npy", np.ones((3, 2)), r"'.*wide\.npy' has shape \(3, 2\): a labels file holds one class per point"),
    ("none.npy", np.ones(0), r"'.*none\.npy' holds no labels"),
    ("complex.npy", np.array([1 + 1j]), r"'.*complex\.npy' holds complex numbers"),
    ("gaps.npy", np.array([1.0, np.nan, 2.0, np.nan]), r"'.*gaps\.npy' has 2 missing label\(s\) \(rows 1, 3\)"),
    ("halves.npy", np.array([1.0, 1.5, 2.0]), r"'.*halves\.npy' holds numbers that are not whole \(rows 1\)"),
    ("nan.txt", "dog\nNaN\ncat\n", r"'.*nan\.txt' has 1 missing label\(s\) \(rows 1\)"),
    ("two.csv#y", {"label": ["a", "b"], "y": [1.0, 1.5]},
     r"column 'y' of '.*two\.csv' holds numbers that are not whole \(rows 1\)"),
    ("objects.npy", np.array(["a", None], dtype=object),
     r"'.*objects\.npy' cannot be read as a \.npy array \(.*\): save the labels with np\.save as numbers or strings"),
    ("labels.h5", None, r"the labels file '.*labels\.h5' has the type '\.h5', which proxyfda cannot read: save it as "
                        r"\.npy, \.txt, \.csv, \.parquet \(one class name or id per point\)"),
])
def test_bad_labels_files_are_named_with_the_fix(tmp_path, source, content, message):
    name = source.split("#")[0]
    if name.endswith(".npy") and content is not None and content.dtype == object:
        np.save(tmp_path / name, content, allow_pickle=True)
    elif content is not None:
        write_labels(tmp_path / name, content)
    with pytest.raises(ProxyFDAError, match="^" + message):
        load_labels(str(tmp_path / source))


def npy(tmp_path, name, x):
    np.save(tmp_path / name, x)
    return str(tmp_path / name)


def pq_write(path, columns: dict) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return str(path)


def pa_list(rows):
    import pyarrow as pa

    return pa.array(rows, type=pa.list_(pa.float32()))


GOOD = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)


@pytest.mark.parametrize("make, message", [
    (lambda p: npy(p, "nan.npy", np.where(np.arange(30)[:, None] % 7 == 3, np.nan, GOOD)),
     r"'.*nan\.npy' has 4 row\(s\) with NaN or infinite values \(rows 3, 10, 17, 24\): drop or fix those points, "
     r"and drop the same rows from the other embedding file"),
    (lambda p: npy(p, "inf.npy", np.where(np.arange(30)[:, None] == 5, np.inf, GOOD)),
     r"'.*inf\.npy' has 1 row\(s\) with NaN or infinite values \(rows 5\)"),
    (lambda p: npy(p, "words.npy", np.array([["a", "b"], ["c", "d"]])),
     r"'.*words\.npy' holds strings \(<U1\), not numbers: save the embeddings as a numeric array of floats"),
    (lambda p: npy(p, "pickled.npy", np.array([[1.0, "a"]], dtype=object)),
     r"'.*pickled\.npy' cannot be read as a \.npy array \(.*\): save the embeddings with np\.save\(path, x\) as a "
     r"numeric \[N, d\] array \(not an object array\)"),
    (lambda p: npy(p, "complex.npy", GOOD.astype(np.complex64)),
     r"'.*complex\.npy' holds complex numbers \(complex64\): .*save np\.abs\(x\), x\.real"),
    (lambda p: npy(p, "flat.npy", GOOD[:, 0]),
     r"'.*flat\.npy' is a 1-D array of shape \(30,\), not \[N points, d features\]: it looks like a single vector or "
     r"one number per point: save an \[N, d\] array, e\.g\. x\.reshape\(len\(x\), -1\) \(or x\.reshape\(-1, 1\) for one "
     r"number per point\)$"),
    (lambda p: npy(p, "scalar.npy", np.float32(3.0)), r"'.*scalar\.npy' is a 0-D array of shape \(\), .*\(or x\.reshape"),
    (lambda p: npy(p, "records.npy", np.zeros(3, dtype=[("a", "<f4")])),
     r"'.*records\.npy' holds \[\('a', '<f4'\)\] \(\[\('a', '<f4'\)\]\), not numbers"),
    (lambda p: (p / "header.csv").write_text("v\n") and str(p / "header.csv#v"),
     r"column 'v' of '.*header\.csv' is empty \(shape \(0, 0\)\)"),
    (lambda p: (p / "gap.csv").write_text('id,v\n0,"[1, 2]"\n1,\n') and str(p / "gap.csv"),
     r"row 1 of column 'v' in '.*gap\.csv' is nan, not a vector like \"\[0\.1, 0\.2, \.\.\.\]\""),
    (lambda p: pq_write(p / "none.parquet", {}) + "#x", r"'.*none\.parquet' has no column 'x'; its columns are: none\."),
    (lambda p: pq_write(p / "rowless.parquet", {"v": pa_list([])}),
     r"'.*rowless\.parquet' is empty \(shape \(0, 0\)\)"),
    (lambda p: npy(p, "tokens.npy", GOOD.reshape(30, 2, 2)),
     r"'.*tokens\.npy' is a 3-D array of shape \(30, 2, 2\).*flatten the trailing axes.*x\.mean\(axis=1\)"),
    (lambda p: npy(p, "empty.npy", np.empty((0, 4), np.float32)),
     r"'.*empty\.npy' is empty \(shape \(0, 4\)\): it needs at least one point and one feature"),
    (lambda p: npy(p, "zero.npy", np.where(np.arange(30)[:, None] == 2, 0.0, GOOD)),
     r"'.*zero\.npy' has 1 all-zero row\(s\) \(rows 2\), which have no direction.*drop those points"),
    (lambda p: str(p / "missing.npy"), r"the embedding file '.*missing\.npy' does not exist or is not a file: check"),
    (lambda p: (p / "x.h5").write_text("") or str(p / "x.h5"),
     r"the embedding file '.*x\.h5' has the type '\.h5', which proxyfda cannot read: save it as \.npy, \.parquet, "
     r"\.csv"),
    (lambda p: npy(p, "objects.npy", GOOD) and str(p / "objects.npy#col"),
     r"'.*objects\.npy' is a \.npy array, which has no columns: drop '#col' from the path"),
    (lambda p: save_parquet_lists(p / "t.parquet", GOOD) and f"{p / 't.parquet'}#emb",
     r"'.*t\.parquet' has no column 'emb'; its columns are: id, embedding\. Name one as t\.parquet#COLUMN"),
    (lambda p: save_csv_strings(p / "t.csv", GOOD) and f"{p / 't.csv'}#vec",
     r"'.*t\.csv' has no column 'vec'; its columns are: id, embedding\. Name one as t\.csv#COLUMN"),
    (lambda p: pd.DataFrame({"name": ["a"] * 3, "x": [1.0, 2.0, 3.0]}).to_csv(p / "mixed.csv", index=False)
     or str(p / "mixed.csv"),
     r"'.*mixed\.csv' has no column of vectors and is not all numbers \(its columns are: name, x\)"),
    (lambda p: pd.DataFrame({"v": ["[1, 2]", "[1, 2, 3]", "[4, 5]"]}).to_csv(p / "ragged.csv", index=False)
     or str(p / "ragged.csv"),
     r"the vectors in column 'v' of '.*ragged\.csv' have different lengths \(2, 3; 1 row\(s\) \(rows 1\)"),
    (lambda p: pd.DataFrame({"v": ["[1, 2]", "[1, x]"]}).to_csv(p / "text.csv", index=False) or str(p / "text.csv"),
     r"row 1 of column 'v' in '.*text\.csv' holds something that is not a real number"),
    (lambda p: pd.DataFrame({"v": [[1.0, 2.0], None]}).to_parquet(p / "null.parquet") or str(p / "null.parquet"),
     r"column 'v' of '.*null\.parquet' has 1 empty \(null\) row\(s\) \(rows 1\): every point needs a vector"),
    (lambda p: pd.DataFrame({"v": [["a", "b"], ["c", "d"]]}).to_parquet(p / "str.parquet") or str(p / "str.parquet"),
     r"column 'v' of '.*str\.parquet' holds lists of (string|large_string), not numbers"),
    (lambda p: npy(p, "bytes.npy", np.array([[b"ab"]] * 3)), r"'.*bytes\.npy' holds bytes \(\|S2\), not numbers"),
    (lambda p: npy(p, "dates.npy", np.array([["2020-01-01"]] * 3, dtype="datetime64[D]")),
     r"'.*dates\.npy' holds dates \(datetime64\[D\]\), not numbers"),
    (lambda p: npy(p, "spans.npy", np.array([[1]] * 3, dtype="timedelta64[s]")),
     r"'.*spans\.npy' holds time spans \(timedelta64\[s\]\), not numbers"),
    (lambda p: pd.DataFrame({"v": [[1.0, 2.0], [1.0, 2.0, 3.0], [4.0, 5.0]]}).to_parquet(p / "ragged.parquet")
     or str(p / "ragged.parquet"),
     r"the vectors in column 'v' of '.*ragged\.parquet' have different lengths \(2, 3; 1 row\(s\) \(rows 1\)"),
    (lambda p: pd.DataFrame({"name": ["a"] * 3, "x": [1.0, 2.0, 3.0]}).to_parquet(p / "mixed.parquet")
     or str(p / "mixed.parquet"),
     r"'.*mixed\.parquet' has no column of vectors and is not all numbers \(its columns are: name, x\)"),
])
def test_bad_files_are_named_with_the_fix(tmp_path, make, message):
    with pytest.raises(ProxyFDAError, match="^" + message):  # from its first word: a file is not called a column
        load_vectors(make(tmp_path))


def test_parquet_lists_of_fixed_size_or_of_booleans_and_a_single_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 3)}),
                   tmp_path / "fixed.parquet")
    np.testing.assert_array_equal(load_vectors(str(tmp_path / "fixed.parquet")), x)
    pd.DataFrame({"flags": [[True, False], [False, True]]}).to_parquet(tmp_path / "bools.parquet")
    flags = load_vectors(str(tmp_path / "bools.parquet"))
    assert flags.dtype == np.float32 and flags.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    save_parquet_lists(tmp_path / "one.parquet", x[:1])
    np.testing.assert_array_equal(load_vectors(str(tmp_path / "one.parquet")), x[:1])


def test_integers_and_booleans_are_read_as_float32(tmp_path):
    ints = np.arange(1, 13).reshape(6, 2)
    assert load_vectors(npy(tmp_path, "i.npy", ints)).dtype == np.float32
    assert load_vectors(npy(tmp_path, "f64.npy", ints.astype(np.float64))).dtype == np.float64
    x = load_vectors(npy(tmp_path, "b.npy", np.eye(3, dtype=bool)))
    assert x.dtype == np.float32 and not x.flags.writeable  # shared with the in-memory cache: read-only


def test_row_counts_must_agree_naming_the_files(tmp_path, arrays):
    a, b, names = arrays
    a_path, b_path = npy(tmp_path, "a.npy", a), npy(tmp_path, "b.npy", b[:-10])
    with pytest.raises(ProxyFDAError, match=r"the embedding file '.*a\.npy' has 240 rows but '.*b\.npy' has 230: both "
                                            r"must hold the same points in the same order"):
        report_of(a_path, b_path, N)
    np.save(tmp_path / "short.npy", names[:200])
    with pytest.raises(ProxyFDAError, match=r"the labels file '.*short\.npy' has 200 rows but there are 240 embedding "
                                            r"rows \(rows:240\): give one label per point"):
        report_of(a_path, a_path, N, labels=str(tmp_path / "short.npy"))
    with pytest.raises(ProxyFDAError, match=r"the embedding file '.*a\.npy' has 240 rows but the data rows:200 has "
                                            r"200 points"):
        report_of(a_path, a_path, 200)


def test_the_vectors_spec_names_its_file_and_is_not_a_model(tmp_path):
    assert spec_paths(f"vectors:{tmp_path / 'x.parquet'}#emb") == [tmp_path / "x.parquet"]
    with pytest.raises(ProxyFDAError, match="names embeddings read from a file, not an encoder"):
        create_encoder(f"vectors:{tmp_path / 'x.npy'}")
    with pytest.raises(ProxyFDAError, match=r"'rows:x' must give a number of points of at least 1, e.g\. rows:500"):
        load_images("rows:x")
    with pytest.raises(ProxyFDAError, match="rows:3 has no images to show them"):
        load_images("rows:3").thumbnail(0)


# ---------------------------------------------------------------------------------------------
# the command line


def test_cli_drift_of_two_embedding_files_with_labels(tmp_path, arrays, capsys):
    a, b, names = arrays
    save_csv_strings(tmp_path / "a.csv", a)
    save_parquet_lists(tmp_path / "b.parquet", b, column="after")
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "out"
    code = main(["drift", "--features-a", str(tmp_path / "a.csv"), "--features-b", f"{tmp_path / 'b.parquet'}#after",
                 "--labels", str(tmp_path / "labels.txt"), "--k", str(K), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    ids, class_names = load_labels(str(tmp_path / "labels.txt"))
    assert same_metrics(metrics, compute_drift(a, b, ids, class_names, K).metrics)
    assert '"overlap_at_k_mean"' in printed.out and "not computed: L2 drift compares" in printed.out
    assert "proxyfda: note" not in printed.err  # every row is used: no note about asking for more than there are
    points = pd.read_parquet(out / "points.parquet")
    assert len(points) == N and set(points["class"]) == {"cat", "dog", "eel"}
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == f"rows:{N}" and config["pretrained"] == f"vectors:{tmp_path / 'a.csv'}"


def test_cli_drift_without_labels_and_with_images(tmp_path, capsys):
    x = np.random.default_rng(3).normal(size=(359, 6)).astype(np.float32)  # digits:test holds 359
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", np.roll(x, 1, axis=1))
    assert main(["drift", "--features-a", str(tmp_path / "a.npy"), "--features-b", str(tmp_path / "b.npy"),
                 "--k", "4", "--out", str(tmp_path / "plain")]) == 0
    assert set(pd.read_parquet(tmp_path / "plain" / "points.parquet")["class"]) == {"all"}  # no labels: one class
    assert main(["drift", "--features-a", str(tmp_path / "a.npy"), "--features-b", str(tmp_path / "b.npy"),
                 "--images", "digits:test", "--n", "100", "--k", "4", "--out", str(tmp_path / "digits")]) == 0
    points = pd.read_parquet(tmp_path / "digits" / "points.parquet")
    assert len(points) == 100 and points["class"].nunique() == 10  # the digits' classes, a balanced sample
    capsys.readouterr()
    assert main(["drift", "--features-a", str(tmp_path / "a.npy"), "--features-b", str(tmp_path / "b.npy"),
                 "--images", "digits:train", "--out", str(tmp_path / "never")]) == 2
    assert "'{}' has 359 rows but the image set digits:train has 1,438 images".format(tmp_path / "a.npy") in \
        capsys.readouterr().err
    assert main(["drift", "--features-b", str(tmp_path / "b.npy"), "--out", str(tmp_path / "never")]) == 2
    assert "--features-b needs --features-a too" in capsys.readouterr().err
    assert main(["drift", "--features-a", str(tmp_path / "nope.npy"), "--features-b", str(tmp_path / "b.npy"),
                 "--out", str(tmp_path / "never")]) == 2
    assert "nope.npy' does not exist or is not a file" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_the_html_report_without_thumbnails_shows_row_ids(tmp_path, arrays):
    from proxyfda.drift import calibrate
    from proxyfda.report_html import command_line, report_html

    a, b, _ = arrays
    config = DriftConfig(pretrained=f"vectors:{npy(tmp_path, 'a.npy', a)}", finetuned=f"vectors:{npy(tmp_path, 'b.npy', b)}",
                         data=f"rows:{N}", n=0, k=K)
    images, report = run_drift(config)
    maps = (a[:, :2], b[:, :2])  # any 2-D coordinates: the page only draws them
    page = report_html(report, images, maps, calibrate(report, a, b, permutations=2, resamples=20), config, top=3,
                       versions={"proxyfda": "test"})
    assert 'alt="image ' not in page and page.count('class="noimage"') == 3 * (1 + 2 * K)
    assert "shown by its row id instead of a thumbnail" in page and "points (rows of embedding files, no images)" in page
    assert "--labels" not in command_line(config) and "--data rows:240" in command_line(config)


def test_a_column_follows_the_last_hash_of_the_source():
    """A folder may have '#' in its name: only the text after the last '#' names a column (and a path that
    exists as written is a file, whatever it holds)."""
    from proxyfda.vectors import split_source

    assert split_source("runs/v#2/e.csv#emb") == (Path("runs/v#2/e.csv"), "emb")
    assert split_source("e.parquet# ") == (Path("e.parquet"), None)


def test_a_file_rewritten_in_place_is_read_again(tmp_path):
    """The in-memory copy is keyed by path, size and modification time: new values of the same shape and dtype
    (the same size on disk) are read afresh once the file's time has changed."""
    import os

    from proxyfda.vectors import load_vectors

    path = tmp_path / "a.npy"
    np.save(path, np.eye(4, 3, dtype=np.float32) + 1)
    first = load_vectors(str(path))
    np.save(path, np.ones((4, 3), np.float32))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(first, np.eye(4, 3) + 1)
    np.testing.assert_array_equal(load_vectors(str(path)), np.ones((4, 3)))
