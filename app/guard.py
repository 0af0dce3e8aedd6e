"""What a browser may ask of the server: only paths inside the app's folders, and bounded work.

The app binds to 127.0.0.1 by default (`proxyfda app`), but anyone who reaches it can type a path into
a sidebar field or a link's query parameters. Every path a visitor names, in a data spec
(``folder:PATH``) or an encoder spec (``run:DIR``, a checkpoint file), must lie inside one of
`allowed_roots`; everything else is refused with the list of those folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from proxyfda.config import DriftConfig, FinetuneConfig
from proxyfda.data import ImageSet, spec_path
from proxyfda.encoders import spec_paths
from proxyfda.errors import ProxyFDAError
from proxyfda.paths import cache_dir, confine, data_dir, extra_roots
from proxyfda.runs import runs_root
from proxyfda.vectors import split_source

#: the most images one request may embed (the scale the app is built for); $PROXYFDA_MAX_IMAGES changes it
MAX_IMAGES = int(os.environ.get("PROXYFDA_MAX_IMAGES", 100_000))


def allowed_roots() -> list[Path]:
    """The data folder, the runs folder, the cache (features, the default run) and ``--allow``'s folders."""
    return [data_dir(), runs_root(), cache_dir(), *extra_roots()]


def check_specs(data: Iterable[str] = (), encoders: Iterable[str] = ()) -> None:
    """Refuse any data or encoder spec naming a path outside `allowed_roots`."""
    roots = allowed_roots()
    for spec in data:
        folder = spec_path(spec)
        if folder is not None:
            confine(folder, roots)
    for spec in encoders:
        for path in spec_paths(spec):
            confine(path, roots)


def check_images(images: ImageSet) -> None:
    """Refuse a folder whose files lead outside `allowed_roots` (a linked class folder or file pointing
    elsewhere on the server): the folder itself was checked, what it links to must be too."""
    if images.paths is None or spec_path(images.spec) is None:
        return  # a bundled set: read from the installed package, not from a visitor's path
    roots = allowed_roots()
    for path in images.paths:
        confine(path, roots)


def check_drift_config(config: DriftConfig) -> None:
    """A Drift Explorer request: its paths confined (a labels file too) and its sample size bounded."""
    check_count(config.n)
    check_specs([config.data], [config.pretrained, config.finetuned, *([config.compare] if config.compare else [])])
    if config.labels:
        confine(split_source(config.labels)[0], allowed_roots())


def check_count(n_images: int) -> None:
    """Refuse to embed more than `MAX_IMAGES` images in one request (also "all" of a big folder)."""
    if n_images > MAX_IMAGES:
        raise ProxyFDAError(f"{n_images:,} images is more than this app embeds in one request ({MAX_IMAGES:,}); "
                            "choose a smaller sample, or run `proxyfda drift` from a terminal")


def check_finetune_config(config: FinetuneConfig) -> None:
    """A Live fine-tune request: every path it names confined."""
    check_specs([config.data, config.eval_data], [config.base_encoder])
