"""Embeddings and labels that users already have, read from files and checked once, here.

An embedding file holds one vector per point, in the order of the points:

=================  =========================================================================
``.npy``           a 2-D array [N, d] of floats (integers and booleans are read as floats)
``.parquet``       a column of vectors (a list or fixed-size list column), or only numeric columns
                   (one column per coordinate: a "wide" table)
``.csv``           a column of ``"[0.1, 0.2, ...]"`` strings (commas or blanks between the numbers),
                   or only numeric columns (wide), with a header row
=================  =========================================================================

A source is ``PATH`` or ``PATH#COLUMN``; the column may be left out when the table has exactly one
vector column, or is wide. The encoder spec ``vectors:SOURCE`` (`proxyfda.encoders`) names such a
file, so two of them compare through the ordinary drift route.

Every number must be finite and no row all zero (cosine neighbourhoods need a direction); complex
numbers, strings and other objects are refused rather than guessed at. Every error names the file
and says what to do.

A labels file (`load_labels`) holds one class per point: ``.npy`` (1-D), ``.txt`` (one per line),
``.csv`` (with a header row) or ``.parquet``, names or whole-number ids.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import ProxyFDAError, first_line
from .validation import _rows

#: the file types an embedding file may have, and a labels file
VECTOR_SUFFIXES = (".npy", ".parquet", ".csv")
LABEL_SUFFIXES = (".npy", ".txt", ".csv", ".parquet")
#: column names a labels table is read from when it has several columns and none is named
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "target", "y")
#: how many files `load_vectors` keeps in memory (the app reads the same two on every rerun)
_CACHE_SIZE = 4
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()


def split_source(source: str) -> tuple[Path, str | None]:
    """``PATH#COLUMN`` as (path, column); a path whose own name holds ``#`` is kept whole when it exists."""
    text = source.strip()
    path, hash_, column = text.rpartition("#")
    if not hash_ or Path(text).expanduser().exists():
        return Path(text).expanduser(), None
    return Path(path).expanduser(), column.strip() or None


def load_vectors(source: str) -> np.ndarray:
    """The embeddings in ``source`` (``PATH`` or ``PATH#COLUMN``) as a read-only [N, d] float array.

    float32 and float64 files keep their precision (``compute_drift`` on the same arrays gives the same
    report); other numeric types become float32. The last few files read are kept in memory, keyed by
    their path, size and modification time.
    """
    path, column = split_source(source)
    _check_file(path, VECTOR_SUFFIXES, "embedding file", "an [N, d] array saved with np.save, or a table "
                "with a column of vectors")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, column)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    array = _checked(_read_vectors(path, column), path, column)
    array.setflags(write=False)
    with _cache_lock:
        _cache[key] = array
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return array


def row_count(source: str) -> int:
    """How many points the embedding file ``source`` holds (read and checked in full, then kept)."""
    return len(load_vectors(source))


def check_same_rows(sources: list[str]) -> int:
    """The number of rows that every embedding file in ``sources`` holds; an error naming two files that
    differ (they must describe the same points in the same order)."""
    counts = [(source, row_count(source)) for source in sources]
    for source, count in counts[1:]:
        if count != counts[0][1]:
            raise ProxyFDAError(f"the embedding file '{split_source(counts[0][0])[0]}' has {counts[0][1]:,} rows but "
                                f"'{split_source(source)[0]}' has {count:,}: both must hold the same points in the "
                                "same order, one row each; drop the extra rows or export both again from the same "
                                "list of inputs")
    return counts[0][1] if counts else 0


def _check_file(path: Path, suffixes: tuple[str, ...], what: str, shape: str) -> None:
    if path.suffix.lower() not in suffixes:
        raise ProxyFDAError(f"the {what} '{path}' has the type '{path.suffix or 'no suffix'}', which proxyfda "
                            f"cannot read: save it as {', '.join(suffixes)} ({shape})")
    if not path.is_file():
        raise ProxyFDAError(f"the {what} '{path}' does not exist or is not a file: check the path")


def _read_vectors(path: Path, column: str | None) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if column:
            raise ProxyFDAError(f"'{path}' is a .npy array, which has no columns: drop '#{column}' from the path")
        return _load_npy(path, "the embeddings with np.save(path, x) as a numeric [N, d] array")
    if suffix == ".parquet":
        return _parquet_vectors(path, column)
    return _csv_vectors(path, column)


def _load_npy(path: Path, how: str) -> np.ndarray:
    """A .npy file without pickles (an object array is refused: loading one can run code)."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ProxyFDAError(f"'{path}' cannot be read as a .npy array ({first_line(exc)}): save {how} "
                            "(not an object array)") from None


def _parquet_vectors(path: Path, column: str | None) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for files that are not parquet
        raise ProxyFDAError(f"'{path}' cannot be read as a parquet file ({first_line(exc)}): check that it was "
                            "written by a parquet writer (e.g. DataFrame.to_parquet)") from None
    names = list(schema.names)
    vector_columns = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                      or pa.types.is_fixed_size_list(f.type)]
    numeric = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
               or pa.types.is_boolean(f.type)]
    chosen = _choose_column(path, column, names, vector_columns, wide=len(numeric) == len(names) and bool(names))
    if chosen is None:  # wide: one numeric column per coordinate
        return pq.read_table(path).to_pandas().to_numpy()
    array = pq.read_table(path, columns=[chosen]).column(chosen).combine_chunks()
    if chosen not in vector_columns:
        raise ProxyFDAError(f"column '{chosen}' of '{path}' holds {array.type}, not vectors: name a column of "
                            f"lists of numbers (vector columns here: {', '.join(vector_columns) or 'none'})")
    if array.null_count:
        nulls = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
        raise ProxyFDAError(f"column '{chosen}' of '{path}' has {int(nulls.sum())} empty (null) row(s) "
                            f"{_rows(nulls)}: every point needs a vector; drop those rows from every file")
    lengths = np.asarray(array.value_lengths().to_numpy(zero_copy_only=False))
    _check_lengths(lengths, path, chosen)
    values = array.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_boolean(values.type)):
        raise ProxyFDAError(f"column '{chosen}' of '{path}' holds lists of {values.type}, not numbers: "
                            "store the vectors as lists of floats")
    flat = values.to_numpy(zero_copy_only=False)
    return flat.reshape(len(lengths), int(lengths[0]) if len(lengths) else 0)


def _csv_vectors(path: Path, column: str | None) -> np.ndarray:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise ProxyFDAError(f"'{path}' cannot be read as CSV ({first_line(exc)}): write it with a header row, "
                            "e.g. DataFrame.to_csv(path, index=False)") from None
    names = [str(name) for name in frame.columns]
    frame.columns = names
    vector_columns = [name for name in names if frame[name].dropna().astype(str).str.lstrip().str.startswith("[").any()]
    wide = bool(names) and all(pd.api.types.is_numeric_dtype(frame[name]) for name in names)
    chosen = _choose_column(path, column, names, vector_columns, wide)
    if chosen is None:
        return frame.to_numpy()
    return _parse_vector_strings(frame[chosen].tolist(), path, chosen)


def _choose_column(path: Path, column: str | None, names: list[str], vector_columns: list[str],
                   wide: bool) -> str | None:
    """The column to read (None: every column, a wide table), or an error that lists the columns."""
    listed = ", ".join(names) or "none"
    if column is not None:
        if column not in names:
            raise ProxyFDAError(f"'{path}' has no column '{column}'; its columns are: {listed}. "
                                f"Name one as {path.name}#COLUMN")
        return column
    if len(vector_columns) > 1:
        raise ProxyFDAError(f"'{path}' has several vector columns ({', '.join(vector_columns)}): name the one to "
                            f"compare as {path.name}#COLUMN, e.g. {path.name}#{vector_columns[0]}")
    if vector_columns:
        return vector_columns[0]
    if wide:
        return None
    raise ProxyFDAError(f"'{path}' has no column of vectors and is not all numbers (its columns are: {listed}): "
                        f"store the embeddings as one column of lists (in a CSV, strings like \"[0.1, 0.2]\") and "
                        f"name it as {path.name}#COLUMN if there are several, or keep only numeric columns, one "
                        "per coordinate")


def _parse_vector_strings(cells: list, path: Path, column: str) -> np.ndarray:
    """``"[0.1, 0.2]"`` (or ``"[0.1 0.2]"``, numpy's print) cells as rows; a cell that is not a list of
    numbers is named by its row."""
    rows = []
    for i, cell in enumerate(cells):
        text = str(cell).strip()
        if not (text.startswith("[") and text.endswith("]")):
            raise ProxyFDAError(f"row {i} of column '{column}' in '{path}' is {cell!r}, not a vector like "
                                "\"[0.1, 0.2, ...]\": every row needs one; drop that row from every file or fix it")
        body = text[1:-1].replace(",", " ")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # np.fromstring only warns when it stops at text that is not a number
            try:
                rows.append(np.fromstring(body, sep=" ") if body.strip() else np.empty(0))
            except (DeprecationWarning, ValueError):
                raise ProxyFDAError(f"row {i} of column '{column}' in '{path}' holds something that is not a real "
                                    f"number ({text[:60]!r}{'...' if len(text) > 60 else ''}): write the vectors "
                                    "as plain decimal numbers") from None
    lengths = np.array([len(row) for row in rows])
    _check_lengths(lengths, path, column)
    return np.stack(rows) if rows else np.empty((0, 0))


def _check_lengths(lengths: np.ndarray, path: Path, column: str) -> None:
    """All vectors of a column must have one length, and it must not be 0."""
    if len(lengths) and (lengths != lengths[0]).any():
        odd = lengths != np.bincount(lengths).argmax()
        raise ProxyFDAError(f"the vectors in column '{column}' of '{path}' have different lengths "
                            f"({', '.join(map(str, sorted(set(lengths.tolist()))[:5]))}; {int(odd.sum())} row(s) "
                            f"{_rows(odd)} differ from the most common): every point needs a vector of the same width")


def _checked(array: np.ndarray, path: Path, column: str | None) -> np.ndarray:
    """``array`` as the [N, d] float array the drift route needs, or an error naming ``path`` and the fix."""
    where = f"column '{column}' of '{path}'" if column else f"'{path}'"
    kind = array.dtype.kind
    if kind == "c":
        raise ProxyFDAError(f"{where} holds complex numbers ({array.dtype}): cosine neighbourhoods need real vectors; "
                            "save np.abs(x), x.real, or np.concatenate([x.real, x.imag], axis=1)")
    if kind not in "fiub":
        what = {"U": "strings", "S": "bytes", "M": "dates", "m": "time spans"}.get(kind, str(array.dtype))
        raise ProxyFDAError(f"{where} holds {what} ({array.dtype}), not numbers: save the embeddings as a numeric "
                            "array of floats, e.g. np.save(path, np.asarray(x, dtype=np.float32))")
    if array.ndim != 2:
        hint = ("a single vector or one number per point: save an [N, d] array, e.g. x.reshape(len(x), -1) "
                "(or x.reshape(-1, 1) for one number per point)" if array.ndim < 2 else
                "one [N, d] array is one vector per point; flatten the trailing axes, e.g. x.reshape(len(x), -1), "
                "or pool them (x.mean(axis=1) for token embeddings)")
        raise ProxyFDAError(f"{where} is a {array.ndim}-D array of shape {array.shape}, not [N points, d features]: "
                            f"it looks like {hint}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ProxyFDAError(f"{where} is empty (shape {array.shape}): it needs at least one point and one feature")
    if array.dtype != np.float64:  # integers, booleans, half and long floats become the drift route's float32
        array = array.astype(np.float32)
    array = np.ascontiguousarray(array)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise ProxyFDAError(f"{where} has {int(bad.sum())} row(s) with NaN or infinite values {_rows(bad)}: drop or "
                            "fix those points, and drop the same rows from the other embedding file and the labels")
    zero = ~(array != 0).any(axis=1)
    if zero.any():
        raise ProxyFDAError(f"{where} has {int(zero.sum())} all-zero row(s) {_rows(zero)}, which have no direction "
                            "for cosine neighbourhoods: drop those points (the same rows from every file) or fix them")
    return array


def load_labels(source: str) -> tuple[np.ndarray, list[str]]:
    """One class per point from ``source`` (``PATH`` or ``PATH#COLUMN``): integer ids 0..C−1 and the class
    names. Names are sorted and numbered; whole-number ids keep their order and become names ("3", "7")."""
    path, column = split_source(source)
    _check_file(path, LABEL_SUFFIXES, "labels file", "one class name or id per point")
    values = _read_labels(path, column)
    where = f"column '{column}' of '{path}'" if column else f"'{path}'"
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ProxyFDAError(f"{where} has shape {values.shape}: a labels file holds one class per point (a 1-D "
                            "array or a single column)")
    if len(values) == 0:
        raise ProxyFDAError(f"{where} holds no labels: it needs one class per point")
    if values.dtype.kind == "c":
        raise ProxyFDAError(f"{where} holds complex numbers: labels are class names or whole-number ids")
    if values.dtype.kind == "f":
        missing = np.isnan(values)
        if missing.any():
            raise ProxyFDAError(f"{where} has {int(missing.sum())} missing label(s) {_rows(missing)}: give every "
                                "point a class")
        if (values != np.round(values)).any():
            odd = values != np.round(values)
            raise ProxyFDAError(f"{where} holds numbers that are not whole {_rows(odd)}: labels are class names or "
                                "whole-number ids")
        values = values.astype(np.int64)
    if values.dtype.kind in "iu":
        ids, labels = np.unique(values, return_inverse=True)
        return labels.astype(np.int64), [str(i) for i in ids.tolist()]
    names = np.array(["" if v is None else str(v).strip() for v in values.tolist()])
    missing = np.array([n == "" or n.lower() == "nan" for n in names])
    if missing.any():
        raise ProxyFDAError(f"{where} has {int(missing.sum())} missing label(s) {_rows(missing)}: give every point "
                            "a class")
    classes, labels = np.unique(names.astype(str), return_inverse=True)
    return labels.astype(np.int64), classes.tolist()


def _read_labels(path: Path, column: str | None) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _load_npy(path, "the labels with np.save as numbers or strings")
    if suffix == ".txt":
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise ProxyFDAError(f"'{path}' is not UTF-8 text: write one label per line as text") from None
        while lines and not lines[-1].strip():
            lines.pop()
        try:
            return np.array([float(line) for line in lines])
        except ValueError:
            return np.array(lines)
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pandas and pyarrow raise many types for unreadable files
        raise ProxyFDAError(f"'{path}' cannot be read as {suffix[1:]} ({first_line(exc)}): write it with "
                            f"DataFrame.to_{suffix[1:]}(path, index=False)") from None
    names = [str(name) for name in frame.columns]
    frame.columns = names
    if column is None:
        known = [name for name in names if name.lower() in LABEL_COLUMNS]
        if len(names) == 1 or len(known) == 1:
            column = names[0] if len(names) == 1 else known[0]
        else:
            raise ProxyFDAError(f"'{path}' has several columns ({', '.join(names)}): name the labels' column as "
                                f"{path.name}#COLUMN")
    if column not in names:
        raise ProxyFDAError(f"'{path}' has no column '{column}'; its columns are: {', '.join(names)}. Name one as "
                            f"{path.name}#COLUMN")
    series = frame[column]
    if pd.api.types.is_numeric_dtype(series):  # booleans too: their names become "False" and "True"
        return series.to_numpy()
    return series.astype(object).where(series.notna(), None).to_numpy()


def describe(source: str) -> str:
    """A short name for an embedding file in messages and report titles: its file name (and column)."""
    path, column = split_source(source)
    return f"{path.name}#{column}" if column else path.name


def file_stamp(source: str) -> str:
    """Path, size and modification time of an embedding file: enough to tell a changed file apart within
    a session (the app keys its cached reports by it)."""
    path, column = split_source(source)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ProxyFDAError(f"the file '{path}' cannot be read ({exc.strerror}): check the path") from None
    return f"{path.resolve()}|{column}|{stat.st_size}|{stat.st_mtime_ns}"

