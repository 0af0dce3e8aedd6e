"""Regularisers against forgetting, by name: naive, l2sp, ldifs, fda, proxy-fda.

    reg = build_regularizer("fda", k=8)              # None for "naive"
    terms = reg(feats, feats_pre, return_terms=True)  # or reg(encoder) when reg.input_kind == "model"
    reg.records                                      # what the last call saw, for a debugger
"""

from .base import REGULARIZERS, RecordingLoss, build_regularizer, list_regularizers, register_regularizer
from .baselines import L2SPLoss, LDIFSLoss
from .fda import FDALoss, pair_weights, pretrained_neighbours, weighted_sigmoid_loss
from .proxies import ProxyFDALoss, ProxyGenerator, ProxyOutput

__all__ = [
    "REGULARIZERS", "RecordingLoss", "build_regularizer", "list_regularizers", "register_regularizer",
    "L2SPLoss", "LDIFSLoss", "FDALoss", "ProxyFDALoss", "ProxyGenerator", "ProxyOutput",
    "pair_weights", "pretrained_neighbours", "weighted_sigmoid_loss",
]
