"""proxyfda: see what fine-tuning does to a vision encoder's feature space (the library; no UI code).

Data flow: images (`data`) -> features (`encoders`, `features`) -> kNN graphs (`knn`) ->
drift and preservation metrics (`metrics`, `drift`) -> 2D maps (`projection`); fine-tuning runs
live in `training`, configured by the dataclasses in `config`.
"""

from .config import DriftConfig, FinetuneConfig
from .errors import ProxyFDAError

__all__ = ["DriftConfig", "FinetuneConfig", "ProxyFDAError"]
__version__ = "0.1.0"
