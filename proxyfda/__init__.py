"""proxyfda: see what fine-tuning does to a vision encoder's feature space (the library; no UI code).

Data flow: images (`data`) -> features (`encoders`, `features`) -> kNN graphs (`knn`) ->
drift and preservation metrics (`metrics`, `drift`) -> 2D maps (`projection`). Fine-tuning: the
method table (`methods`) and the loop (`training`) write run directories (`runs`), configured by the
dataclasses in `config`. docs/ARCHITECTURE.md draws the layers.
"""

import os

# OpenMP threads that spin while they wait collapse training when another process shares the cores (the
# app's server next to a CLI run, two runs on 2 cores): a fine-tuning step measured 7.4 s instead of
# 0.4 s. Waiting passively costs nothing measurable alone (benchmarks/bench_live.py). It must be set
# before torch starts its thread pool; a value the user chose is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import DriftConfig, FinetuneConfig  # noqa: E402
from .errors import ProxyFDAError  # noqa: E402

__all__ = ["DriftConfig", "FinetuneConfig", "ProxyFDAError"]
__version__ = "0.1.0"
