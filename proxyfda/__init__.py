"""proxyfda: see what fine-tuning does to a vision encoder's feature space (the library; no UI code).

Data flow: images (`data`) -> features (`encoders`, `features`) -> kNN graphs (`knn`) ->
drift and preservation metrics (`metrics`, `drift`) -> 2D maps (`projection`). Fine-tuning: the
method table (`methods`) and the loop (`training`) write run directories (`runs`), configured by the
dataclasses in `config`. docs/ARCHITECTURE.md draws the layers.
"""

from .config import DriftConfig, FinetuneConfig
from .errors import ProxyFDAError

__all__ = ["DriftConfig", "FinetuneConfig", "ProxyFDAError"]
__version__ = "0.1.0"
