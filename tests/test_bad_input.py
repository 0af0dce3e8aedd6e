"""Bad images, data and encoder input become skipped files or sentences, never raw tracebacks.

Every bad file is generated here: a JPEG cut short, a PNG with corrupt pixel data, a PNG declaring
20,000 × 20,000 pixels, symlinks that would list images twice, a file rewritten behind the cache's back.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from proxyfda.cli import main
from proxyfda.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, DriftConfig, FinetuneConfig
from proxyfda.data import MAX_IMAGE_PIXELS, _capped_note, load_folder, load_images
from proxyfda.encoders import create_encoder
from proxyfda.errors import ProxyFDAError
from proxyfda.features import feature_cache_key

RNG = np.random.default_rng(0)


def _noise(size: int = 48) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _png_chunk(png: bytes, kind: bytes) -> tuple[int, int]:
    """(offset of the chunk's data, its length) for the first chunk of ``kind``."""
    at = png.index(kind)
    return at + 4, struct.unpack(">I", png[at - 4:at])[0]


def _with_chunk_data(png: bytes, kind: bytes, data: bytes) -> bytes:
    """``png`` with the data of its first ``kind`` chunk replaced (same length) and the CRC made right again,
    so PIL's ``verify()`` still passes."""
    start, length = _png_chunk(png, kind)
    assert len(data) == length
    crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return png[:start] + data + crc + png[start + length + 4:]


def _broken_pixels_png() -> bytes:
    png = _encoded(_noise(), "PNG")
    start, length = _png_chunk(png, b"IDAT")
    return _with_chunk_data(png, b"IDAT", png[start:start + 10] + RNG.bytes(length - 10))


def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` × ``height`` pixels."""
    png = _encoded(Image.new("L", (1, 1)), "PNG")
    start, _ = _png_chunk(png, b"IHDR")
    return _with_chunk_data(png, b"IHDR", struct.pack(">II", width, height) + png[start + 8:start + 13])


def _class_folder(root: Path, name: str, count: int, suffix: str = ".png") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(count):
        _noise().save(folder / f"{i}{suffix}")
    return folder


def _passes_verify(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
    return True


# ---- images that pass verify() but do not decode --------------------------------------------------


def test_cut_jpeg_and_broken_png_are_skipped_and_listed(tmp_path):
    good = _class_folder(tmp_path, "good", 2)
    bad = _class_folder(tmp_path, "bad", 1, ".jpg")
    jpeg = _encoded(_noise(64), "JPEG")
    (bad / "cut.jpg").write_bytes(jpeg[:-300])
    (good / "broken.png").write_bytes(_broken_pixels_png())
    assert _passes_verify(bad / "cut.jpg") and _passes_verify(good / "broken.png")  # what let them through before
    images = load_folder(tmp_path)
    reasons = dict(images.skipped)
    assert len(images) == 3 and set(reasons) == {str(bad / "cut.jpg"), str(good / "broken.png")}
    assert all(reason.startswith("cannot be decoded as an image") for reason in reasons.values())
    assert "truncated" in reasons[str(bad / "cut.jpg")]
    assert images.batch(np.arange(len(images)), 32).shape == (3, 3, 32, 32)  # every listed file reads


def test_huge_images_are_skipped_with_their_size_and_no_pil_warning(tmp_path):
    _class_folder(tmp_path, "ok", 1)
    (tmp_path / "ok" / "bomb.png").write_bytes(_png_declaring(20_000, 20_000))  # PIL refuses: over 2× its limit
    (tmp_path / "ok" / "big.png").write_bytes(_png_declaring(10_000, 10_000))  # PIL only warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning fails the test
        images = load_folder(tmp_path)
    reasons = dict(images.skipped)
    assert len(images) == 1
    bomb = reasons[str(tmp_path / "ok" / "bomb.png")]
    assert "20,000 × 20,000 pixels" in bomb and "MAX_IMAGE_PIXELS" in bomb
    assert f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels" in bomb
    assert "10,000 × 10,000 pixels" in reasons[str(tmp_path / "ok" / "big.png")]


# ---- links that would list images twice ---------------------------------------------------------------


def test_linked_class_folders_and_files_are_listed_once(tmp_path):
    root = tmp_path / "images"
    a = _class_folder(root, "a", 2)
    _class_folder(root, "b", 1)
    outside = _class_folder(tmp_path, "elsewhere", 1)
    (root / "self").symlink_to(".")  # the image folder itself
    (root / "up").symlink_to("..")  # one of its parents
    (root / "again").symlink_to("a")  # another class folder
    (root / "linked").symlink_to(outside)  # a folder elsewhere: a class of its own
    (root / "b" / "copy.png").symlink_to(a / "0.png")  # an image listed already
    images = load_folder(root)
    assert images.class_names == ["a", "b", "linked"] and len(images) == 4
    assert len({path.resolve() for path in images.paths}) == len(images)
    reasons = dict(images.skipped)
    for name in ("self", "up", "again"):
        assert reasons[str(root / name)].startswith("a link to")
    assert reasons[str(root / "b" / "copy.png")] == f"the same file as {a / '0.png'}, listed already"


# ---- what drift says about the images it compared -------------------------------------------------------


def test_asking_for_more_images_than_a_set_holds_is_noted(tmp_path):
    _class_folder(tmp_path, "a", 3)
    images = load_images(f"folder:{tmp_path}", n=1000)
    assert len(images) == 3
    assert images.notes == [f"asked for 1,000 images but folder:{tmp_path} holds only 3, so all 3 are used "
                            "(ask for at most 3)"]
    assert load_images(f"folder:{tmp_path}", n=3).notes == []
    # a bundled set's split also points at the whole set
    assert _capped_note("digits:test", 1000, 359).endswith("(ask for at most 359, or use the whole set, 'digits:all')")


def test_drift_prints_skipped_files_and_the_cap(tmp_path, capsys):
    for name in ("a", "b", "c"):
        _class_folder(tmp_path / "images", name, 3)
    for i in range(4):
        (tmp_path / "images" / "a" / f"notes{i}.txt").write_text("not an image")
    code = main(["drift", "--pretrained", "efficientnet-lite0", "--finetuned", "efficientnet-lite0", "--data",
                 f"folder:{tmp_path / 'images'}", "--n", "50", "--k", "3", "--image-size", "32",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    err = capsys.readouterr().err
    assert "asked for 50 images but" in err and "holds only 9, so all 9 are used" in err
    assert f"4 files in folder:{tmp_path / 'images'} were skipped ({tmp_path / 'images' / 'a' / 'notes0.txt'}: " \
           "not an image file type (.txt)" in err and "; and 1 more)" in err


# ---- input resolution ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [-1, 8, MIN_IMAGE_SIZE - 1, MAX_IMAGE_SIZE + 1, 100_000])
def test_image_size_out_of_range_is_refused_early(size, tmp_path, capsys):
    expected = f"between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} px"
    for make in (lambda: DriftConfig(image_size=size), lambda: FinetuneConfig(image_size=size),
                 lambda: create_encoder("efficientnet-lite0", image_size=size)):
        with pytest.raises(ProxyFDAError, match=expected):
            make()
    started = time.perf_counter()
    for command in (["embed", "--encoder", "efficientnet-lite0", "--data", "digits", "--out", str(tmp_path / "x.npy")],
                    ["drift", "--data", "digits", "--out", str(tmp_path / "d")]):
        assert main([*command, "--image-size", str(size)]) == 2
        err = capsys.readouterr().err
        assert expected in err and "metric=" not in err
    assert time.perf_counter() - started < 5  # refused before any image is read or model built
    if 0 < size < MIN_IMAGE_SIZE:
        assert "all-zero features" in err


def test_image_size_zero_means_the_encoders_own():
    assert DriftConfig(image_size=0).image_size == 0
    with pytest.raises(ProxyFDAError, match="got 0"):
        FinetuneConfig(image_size=0)  # a fine-tune trains at one stated resolution


# ---- open_clip hub weights offline --------------------------------------------------------------------


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache and no proxy, so only this test's own settings decide."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's URL downloads land in ~/.cache/clip
    return tmp_path / "hub"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _offline_failure(spec: str) -> tuple[str, float]:
    started = time.perf_counter()
    with pytest.raises(ProxyFDAError) as caught:
        create_encoder(spec)
    return str(caught.value), time.perf_counter() - started


def test_open_clip_tag_offline_fails_fast_with_a_sentence(empty_hub_cache, monkeypatch):
    import open_clip  # imported before the clock starts: its import is not what is measured

    assert open_clip.list_models()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message, seconds = _offline_failure("open_clip:RN50:openai")
    assert seconds < 5
    assert "open_clip RN50 with the 'openai' weights needs the internet for its first download" in message
    assert "HF_HUB_OFFLINE is set" in message and "'open_clip:RN50:/path/to/weights.pt'" in message


def test_open_clip_tag_with_unreachable_hub_fails_fast(empty_hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    message, seconds = _offline_failure("open_clip:RN50:openai")
    assert seconds < 5 and "127.0.0.1 cannot be reached" in message


def test_cached_hub_weights_need_no_network(empty_hub_cache, monkeypatch):
    from proxyfda.backbones import check_hub_weights

    snapshot = empty_hub_cache / "models--timm--resnet50_clip.openai" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_hub_weights("RN50", "openai")  # no error: open_clip finds them in the cache


# ---- the feature cache follows content, not size and mtime ------------------------------------------


def test_rewritten_file_with_same_size_and_mtime_changes_the_cache_key(tmp_path):
    folder = _class_folder(tmp_path, "a", 2, ".bmp")  # uncompressed: new pixels, same size
    encoder = SimpleNamespace(weights_hash=lambda: "w", preprocessing_key=lambda: "64")
    before = load_folder(tmp_path)
    key = feature_cache_key(encoder, before)
    target = folder / "1.bmp"
    stat = target.stat()
    _noise().save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    after = load_folder(tmp_path)
    assert after.fingerprint != before.fingerprint
    assert feature_cache_key(encoder, after) != key
    assert load_folder(tmp_path).fingerprint == after.fingerprint  # and stable while nothing changes
