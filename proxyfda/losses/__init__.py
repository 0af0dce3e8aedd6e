"""Regularisers against forgetting, by name: l2sp, ldifs (taps), ldifs-final, fda, proxy-fda.

    reg = build_regularizer("fda", k=8)
    terms = reg(feats, feats_pre, return_terms=True)  # reg.input_kind: "features" (this), "model":
                                                     # reg(encoder), "taps": reg(taps, taps_pre)
    reg.records                                      # what the last call saw, for a debugger

Naive fine-tuning has no regulariser: the method table (proxyfda.methods) says which one each
method adds.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import ProxyFDAError
from .base import REGULARIZERS, RecordingLoss, keyword_names, register_regularizer
from .baselines import L2SPLoss, LDIFSFinalLoss, LDIFSLoss
from .fda import FDALoss, pair_weights, pretrained_neighbours, weighted_sigmoid_loss
from .proxy_fda import ProxyFDALoss
from .proxy_generator import ProxyGenerator, ProxyOutput

__all__ = [
    "REGULARIZERS", "RecordingLoss", "build_regularizer", "list_regularizers", "register_regularizer",
    "L2SPLoss", "LDIFSLoss", "LDIFSFinalLoss", "FDALoss", "ProxyFDALoss", "ProxyGenerator", "ProxyOutput",
    "pair_weights", "pretrained_neighbours", "weighted_sigmoid_loss",
]


def list_regularizers() -> list[str]:
    """Names `build_regularizer` accepts."""
    return REGULARIZERS.names()


def build_regularizer(name: str, **options: Any) -> RecordingLoss:
    """The regulariser registered as ``name``, built with ``options`` (each checked against its constructor)."""
    if name not in REGULARIZERS:
        raise ProxyFDAError(f"unknown regulariser {name!r}; choose one of {', '.join(map(repr, sorted(REGULARIZERS)))}")
    factory = REGULARIZERS[name]
    known = factory.option_names() if hasattr(factory, "option_names") else keyword_names(factory)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ProxyFDAError(f"regulariser {name!r} has no option(s) {', '.join(unknown)}; "
                            f"it accepts: {', '.join(known) or 'no options'}")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:  # a required option is missing
        raise ProxyFDAError(f"regulariser {name!r}: {exc}") from None
    return factory(**options)
