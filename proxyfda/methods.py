"""The fine-tuning methods as data: what each adds to the task loss, and how it trains.

The training loop (`proxyfda.training`) reads this table instead of branching on names; the CLI's
``--help`` and the app list it. A method's row says which regulariser it adds (a
`proxyfda.losses` name) with which default options, what batches it wants, whether it needs the
pre-trained features of the training images, how its head starts, which trainer runs it, and its
training defaults (what a `FinetuneConfig` field left ``None`` becomes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .config import FinetuneConfig, SafeConfig
from .encoders import canonical_spec
from .errors import ProxyFDAError

#: what the FinetuneConfig fields left None become, for the methods that fine-tune the encoder
TRAINING_DEFAULTS = MappingProxyType({"steps": 300, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01})
#: SAFE's own training defaults, from its paper's recipe (`SafeConfig`)
SAFE_TRAINING_DEFAULTS = MappingProxyType({name: getattr(SafeConfig(), name) for name in TRAINING_DEFAULTS})
#: the options SAFE takes through ``reg_options`` (its config fields that FinetuneConfig does not carry)
SAFE_OPTIONS = tuple(f.name for f in dataclasses.fields(SafeConfig) if f.name not in (*TRAINING_DEFAULTS, "seed"))


@dataclass(frozen=True)
class Method:
    """One row of the method table."""

    name: str
    summary: str  # what it adds to the task loss, in one line
    regularizer: str | None = None  # a proxyfda.losses registry name
    options: Mapping[str, Any] = field(default_factory=dict)  # the regulariser's default options
    strength: str | None = None  # the option that sets how strongly it holds the encoder (in ``options``)
    sampler: str = "epoch"  # what sampler="auto" means: "epoch" (shuffled) or "balanced" (m classes × n)
    needs_pretrained_features: bool = False  # regulariser targets or the probe head read them
    head: str = "random"  # "random", or "probe": a linear probe fitted on frozen pre-trained features
    trainer: str = "encoder"  # "encoder": proxyfda.training's loop; "safe": SAFE's attention-pooling fit
    training: Mapping[str, Any] = field(default_factory=lambda: TRAINING_DEFAULTS)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("naive", "task loss only"),
    Method("l2sp", "+ α‖θ − θ0‖² on the encoder's weights", regularizer="l2sp", options={"alpha": 0.5},
           strength="alpha"),
    Method("ldifs", "+ α · LDIFS as published: per-element distance of internal activations at several depths "
           "to a frozen pre-trained copy's", regularizer="ldifs", options={"alpha": 10.0}, strength="alpha"),
    Method("ldifs-final", "+ α · our one-layer LDIFS variant: distance of the L2-normalised final features to "
           "the pre-trained ones", regularizer="ldifs-final", options={"alpha": 10.0}, strength="alpha",
           needs_pretrained_features=True),
    Method("lp-ft", "the head starts as a linear probe on frozen features, then naive fine-tuning",
           needs_pretrained_features=True, head="probe"),
    Method("fda", "+ λ · FDA: the batch's pre-trained kNN graph, kept in the fine-tuned space", regularizer="fda",
           options={"preset": "ours", "weight": 1.0}, strength="weight", sampler="balanced",
           needs_pretrained_features=True),
    Method("proxy-fda", "+ λ · FDA over real features and generated proxies (Proxy-FDA, ICML 2025; the proxy "
           "generator is a reconstruction)", regularizer="proxy-fda", options={"preset": "ours", "weight": 1.0},
           strength="weight", sampler="balanced", needs_pretrained_features=True),
    Method("safe", "CLIP ResNets: tune only attnpool, blend with the original at inference (SAFE)",
           trainer="safe", training=SAFE_TRAINING_DEFAULTS),
)}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> Method:
    """The method called ``name``, or an error listing the methods there are."""
    method = METHODS.get(name)
    if method is None:
        raise ProxyFDAError(f"unknown fine-tuning method '{name}'; available: {', '.join(METHODS)}")
    return method


def resolve_config(config: FinetuneConfig) -> FinetuneConfig:
    """``config`` with every method-dependent choice made: the None training fields take the method's
    defaults, ``reg_options`` the method's default options (e.g. FDA's preset) under the user's,
    ``sampler="auto"`` the method's sampler, and the base encoder its canonical spec (the
    ``default-finetuned`` alias becomes the run it names). A run saves this resolved config."""
    method = get_method(config.method)
    filled = {name: value for name, value in method.training.items() if getattr(config, name) is None}
    sampler = method.sampler if config.sampler == "auto" else config.sampler
    return config.replace(**filled, sampler=sampler, reg_options=method_options(config),
                          base_encoder=canonical_spec(config.base_encoder))


def method_label(config: FinetuneConfig) -> str:
    """How results name a run's method: with its preset where it has one, e.g. "proxy-fda (paper)"."""
    preset = method_options(config).get("preset")
    return f"{config.method} ({preset})" if preset else config.method


def method_options(config: FinetuneConfig) -> dict[str, Any]:
    """The method's default options overridden by ``config.reg_options``; options a method cannot take
    are refused (a regulariser's own are checked again, against its constructor, when it is built)."""
    method = get_method(config.method)
    if method.trainer == "safe":
        unknown = sorted(set(config.reg_options) - set(SAFE_OPTIONS))
        if unknown:
            raise ProxyFDAError(f"SAFE has no option(s) {', '.join(unknown)}; it accepts: {', '.join(SAFE_OPTIONS)} "
                                "(steps, lr, batch size, weight decay and seed are fine-tuning options of their own)")
    elif method.regularizer is None and config.reg_options:
        raise ProxyFDAError(f"method '{config.method}' has no regulariser, so reg_options "
                            f"{sorted(config.reg_options)} would be ignored; remove them")
    return {**method.options, **config.reg_options}
