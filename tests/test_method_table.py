"""The method table against each method's own definition, and the optimisers the loop builds from it.

The expected rows are written here from the papers and docs/METHOD.md, not read from the table: a row with
the wrong regulariser, strength, sampler, head or trainer is a method that is not the one its name says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from proxyfda.config import FinetuneConfig
from proxyfda.losses import build_regularizer
from proxyfda.methods import METHODS, method_label, resolve_config
from proxyfda.training import GENERATOR_LR, make_optimizers, make_sampler

#: name -> (regulariser, {strength option: default}, sampler, needs pre-trained features, head, trainer)
PUBLISHED = {
    "naive": (None, {}, "epoch", False, "random", "encoder"),
    "l2sp": ("l2sp", {"alpha": 0.5}, "epoch", False, "random", "encoder"),
    "ldifs": ("ldifs", {"alpha": 10.0}, "epoch", False, "random", "encoder"),  # LDIFS's own α = 10, on its taps
    "ldifs-final": ("ldifs-final", {"alpha": 10.0}, "epoch", True, "random", "encoder"),
    "lp-ft": (None, {}, "epoch", True, "probe", "encoder"),  # a probe on frozen features, then naive
    "fda": ("fda", {"weight": 1.0}, "balanced", True, "random", "encoder"),  # 16 classes × 4, hard mining
    "proxy-fda": ("proxy-fda", {"weight": 1.0}, "balanced", True, "random", "encoder"),
    "safe": (None, {}, "epoch", False, "random", "safe"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_method_row_is_its_published_definition(name):
    regularizer, strength, sampler, needs_pre, head, trainer = PUBLISHED[name]
    method = METHODS[name]
    assert (method.regularizer, method.sampler, method.needs_pretrained_features, method.head, method.trainer) == \
        (regularizer, sampler, needs_pre, head, trainer)
    assert {method.strength: method.options[method.strength]} == strength if strength else method.strength is None
    if name in ("fda", "proxy-fda"):
        assert method.options["preset"] == "ours" and method_label(FinetuneConfig(method=name)) == f"{name} (ours)"
    assert set(METHODS) == set(PUBLISHED)


def _labels(classes: int = 12, per_class: int = 10) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


class _Sized:
    """What a sampler reads of an image set: its labels, class names and length."""

    def __init__(self, labels: np.ndarray):
        self.labels, self.class_names = labels, [str(c) for c in np.unique(labels)]

    def __len__(self) -> int:
        return len(self.labels)


@pytest.mark.parametrize("name", ["naive", "fda", "proxy-fda", "lp-ft"])
def test_auto_sampler_draws_the_batches_the_method_asks_for(name):
    """Balanced methods get m classes × n images each batch; the others shuffled epochs of distinct images."""
    labels = _labels()
    config = resolve_config(FinetuneConfig(method=name, batch_size=12, classes_per_batch=4))
    features = np.random.default_rng(0).normal(size=(len(labels), 8))
    sampler = make_sampler(config, _Sized(labels), features)
    batches = [sampler.next_batch() for _ in range(10)]  # one epoch of 120 images
    if PUBLISHED[name][2] == "balanced":
        for batch in batches:
            classes, counts = np.unique(labels[batch], return_counts=True)
            assert len(classes) == 4 and counts.tolist() == [3, 3, 3, 3]
    else:
        assert sorted(np.concatenate(batches).tolist()) == list(range(120))


def _parameters(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("name", ["fda", "proxy-fda"])
def test_weight_decay_reaches_the_encoder_and_head_only(name):
    """With every gradient zero, AdamW's step is its decoupled weight decay alone: p <- p (1 - lr wd). The
    encoder and head decay; learnable τ and b must not (decay would drag them toward τ = 1, b = 0), and the
    proxy generator trains on its own Adam without decay."""
    torch.manual_seed(0)
    encoder, head = nn.Linear(6, 5), nn.Linear(5, 3)
    regularizer = build_regularizer(name, learn_tau=True, learn_bias=True, bias=0.5)
    config = FinetuneConfig(lr=0.1, weight_decay=0.2)
    optimizer, generator_opt = make_optimizers(config, encoder, head, regularizer)
    modules = {"encoder": encoder, "head": head, "regularizer": regularizer}
    before = {key: _parameters(module) for key, module in modules.items()}
    for module in modules.values():
        for p in module.parameters():
            p.grad = torch.zeros_like(p)
    optimizer.step()
    if generator_opt is not None:
        generator_opt.step()
    for key in ("encoder", "head"):
        for old, new in zip(before[key], modules[key].parameters()):
            torch.testing.assert_close(new.detach(), old * (1 - 0.1 * 0.2))
    for old, new in zip(before["regularizer"], regularizer.parameters()):
        assert torch.equal(new.detach(), old)
    learnable = {id(regularizer.log_tau if name == "fda" else regularizer.fda.log_tau)}
    trained_by_adamw = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert learnable <= trained_by_adamw
    if name == "proxy-fda":
        generator = {id(p) for p in regularizer.generator.parameters()}
        assert not generator & trained_by_adamw  # the encoder's optimiser never steps the generator
        assert {id(p) for group in generator_opt.param_groups for p in group["params"]} == generator
        assert generator_opt.param_groups[0]["lr"] == GENERATOR_LR
    else:
        assert generator_opt is None


# ---- an option set to zero is zero, never the default it would otherwise take ----------------------------

@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_a_zero_given_by_the_user_stays_zero(name):
    config = resolve_config(FinetuneConfig(method=name, weight_decay=0.0, warmup_steps=0, seed=0))
    assert (config.weight_decay, config.warmup_steps) == (0.0, 0)
    method = METHODS[name]
    if method.strength:
        off = resolve_config(FinetuneConfig(method=name, reg_options={method.strength: 0.0}))
        assert off.reg_options[method.strength] == 0.0


def test_the_command_line_keeps_a_zero_too():
    from proxyfda.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["finetune", "--out", "x", "--weight-decay", "0", "--warmup-steps", "0",
                                      "--method", "fda", "--reg-options", '{"weight": 0, "bias": 0}'])
    config = resolve_config(_config_from_args(FinetuneConfig, args))
    assert (config.weight_decay, config.warmup_steps) == (0.0, 0)
    assert config.reg_options["weight"] == 0 and config.reg_options["bias"] == 0


@pytest.mark.parametrize("name", ["fda", "proxy-fda"])
def test_a_zero_option_overrides_its_preset(name):
    """The "paper" preset sets b = 5; b = 0 given explicitly must be b = 0 (threshold cos 0), not 5."""
    loss = build_regularizer(name, preset="paper", bias=0.0)
    fda = loss if name == "fda" else loss.fda
    assert float(fda.bias) == 0.0 and fda.threshold == "fixed"
    assert float(build_regularizer(name, preset="paper").bias if name == "fda"
                 else build_regularizer(name, preset="paper").fda.bias) == 5.0


def test_lr_schedule_without_warm_up_starts_at_the_full_rate():
    from proxyfda.training import lr_at

    config = FinetuneConfig(lr=0.1, steps=10, warmup_steps=0)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(5, config) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 5 / 10)))
    assert lr_at(10, config) == pytest.approx(0.0, abs=1e-12)


def test_methods_are_listed_in_the_order_users_read_them():
    from proxyfda.methods import method_names

    assert method_names() == ["naive", "l2sp", "ldifs", "ldifs-final", "lp-ft", "fda", "proxy-fda", "safe"]


def test_proxy_fda_hands_its_learnable_tau_and_bias_to_the_encoders_optimiser():
    loss = build_regularizer("proxy-fda", learn_tau=True, learn_bias=True)
    assert [id(p) for p in loss.fda_parameters()] == [id(loss.fda.log_tau), id(loss.fda.bias)]
    assert build_regularizer("proxy-fda").fda_parameters() == []
