"""The architectures proxyfda can embed images with, and loading their weights with clear errors.

Each architecture registers a builder under a spec prefix (``efficientnet-lite0`` …, ``open_clip``);
`proxyfda.encoders.create_encoder` resolves full specs (runs, SAFE results, the embedded default)
on top of these. Every encoder maps a batch of images, already resized to ``encoder.image_size``
and scaled to [0, 1], to one pooled feature vector per image; its ``pixel_norm`` is applied first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import torch
from torch import nn

from .errors import ProxyFDAError, first_line
from .paths import bundled_efficientnet_lite0_weights
from .registry import Registry

#: spec prefix -> builder(argument after the first ':', image_size, load_weights, spec) -> Encoder
ARCHITECTURES = Registry()
register_architecture = ARCHITECTURES.register


@dataclass(frozen=True)
class PixelNorm:
    """Per-channel normalisation of [0, 1] pixels: (x - mean) / std."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        return (pixels - mean) / std


class Encoder(nn.Module):
    """A vision backbone that returns pooled features, plus what is needed to feed it.

    Subclasses set ``backbone`` (the trainable module) and implement ``features``.
    """

    def __init__(self, spec: str, name: str, backbone: nn.Module, feature_dim: int, image_size: int,
                 pixel_norm: PixelNorm):
        super().__init__()
        self.spec = spec
        self.name = name
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.pixel_norm = pixel_norm
        self._hash: str | None = None

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] images in [0, 1] -> [B, feature_dim] pooled features (not L2-normalised)."""
        return self.features(self.pixel_norm(images))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def weights_hash(self) -> str:
        """Content hash of the backbone's weights and buffers (BatchNorm statistics included).

        Cached: call `invalidate_hash` after changing weights in place.
        """
        if self._hash is None:
            digest = hashlib.blake2b(digest_size=16)
            for key, tensor in sorted(self.backbone.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
            self._hash = digest.hexdigest()
        return self._hash

    def invalidate_hash(self) -> None:
        self._hash = None

    def preprocessing_key(self) -> str:
        """Everything about the input pipeline that changes the features."""
        return f"{self.image_size}|{self.pixel_norm.mean}|{self.pixel_norm.std}"

    def tap_modules(self) -> list[nn.Module]:
        """The internal layers whose outputs LDIFS's original form compares (several depths of the
        network, input side first); empty when the architecture declares none."""
        return []

    @contextlib.contextmanager
    def capture_taps(self) -> Iterator[list[torch.Tensor]]:
        """Within the block, every forward appends the outputs of `tap_modules` (in their order) to the
        yielded list, gradients included."""
        taps: list[torch.Tensor] = []
        handles = [module.register_forward_hook(lambda module, inputs, output: taps.append(output))
                   for module in self.tap_modules()]
        try:
            yield taps
        finally:
            for handle in handles:
                handle.remove()

    def set_stochastic(self, enabled: bool) -> None:
        """Switch the layers that add noise in training mode (dropout, drop-path, patch and attention
        dropout) on or off. Off, a training-mode forward equals the eval-mode one but for BatchNorm
        statistics, so a regulariser compares like with like against eval-mode pre-trained targets.
        Call after ``train()``; ``eval()`` switches them off anyway."""
        for module in self.modules():
            if _is_stochastic(module):
                module.train(enabled and self.training)


def _is_stochastic(module: nn.Module) -> bool:
    """Layers whose training mode adds noise and nothing else (no statistics are kept)."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return True
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    return type(module).__name__ in ("DropPath", "PatchDropout")  # timm's and open_clip's


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite (offline default)

EFFICIENTNET_LITE_VARIANTS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
                              "efficientnet-lite3", "efficientnet-lite4")
# The TF-Lite models take (x - 127) / 128 on 0..255 pixels; expressed on [0, 1] pixels:
_LITE_NORM = PixelNorm(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


class EfficientNetLiteEncoder(Encoder):
    """EfficientNet-Lite trunk; feature = global average of the 1280-channel head activation."""

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.extract_features(pixels).mean(dim=(2, 3))

    def tap_modules(self) -> list[nn.Module]:
        """The stem, the last block of every stage (where the width changes next) and the head."""
        blocks = list(self.backbone._blocks)
        widths = [block._project_conv.out_channels for block in blocks]
        ends = [block for i, block in enumerate(blocks) if i == len(blocks) - 1 or widths[i] != widths[i + 1]]
        return [self.backbone._bn0, *ends, self.backbone._bn1]

    def set_stochastic(self, enabled: bool) -> None:
        """Also drop-connect, which the trunk applies functionally from its global parameters (rate
        0.2 for Lite0, scaled per block) whenever a block is in training mode."""
        super().set_stochastic(enabled)
        params = self.backbone._global_params
        if not hasattr(self, "_drop_connect_rate"):
            self._drop_connect_rate = params.drop_connect_rate
        self.backbone._global_params = params._replace(drop_connect_rate=self._drop_connect_rate if enabled else 0.0)


def _build_efficientnet_lite(variant: str, checkpoint: str | None, image_size: int | None,
                             load_weights: bool, spec: str) -> EfficientNetLiteEncoder:
    from efficientnet_lite_pytorch import EfficientNet

    size = image_size or EfficientNet.get_image_size(variant)
    # Static "same" padding is computed from the input size, so the trunk is built for it.
    backbone = EfficientNet.from_name(variant, image_size=size)
    backbone._fc = nn.Identity()
    encoder = EfficientNetLiteEncoder(spec, variant, backbone, feature_dim=1280, image_size=size,
                                      pixel_norm=_LITE_NORM)
    if not load_weights:
        return encoder
    if checkpoint is None:
        if variant != "efficientnet-lite0":
            raise ProxyFDAError(
                f"no offline weights ship for {variant}; give a checkpoint file: '{variant}:/path/to/weights.pth'")
        checkpoint = str(bundled_efficientnet_lite0_weights())
    state = read_checkpoint(checkpoint)
    state = state.get("encoder", state)
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.removeprefix("backbone.").startswith("_fc.")}
    load_state_checked(backbone, state, arch=variant, source=checkpoint)
    return encoder


for _variant in EFFICIENTNET_LITE_VARIANTS:
    def _builder(arg, image_size, load_weights, spec, _variant=_variant):
        return _build_efficientnet_lite(_variant, arg or None, image_size, load_weights, spec)

    register_architecture(_variant)(_builder)


# ---------------------------------------------------------------------------------------------
# open_clip


class OpenClipEncoder(Encoder):
    """The image tower of an open_clip model; ``clip_model`` keeps the text tower for zero-shot."""

    def __init__(self, *args, clip_model: nn.Module, arch: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.clip_model = [clip_model]  # a list, so the text tower is not registered as a sub-module
        self.arch = arch  # selects the matching tokenizer for zero-shot

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixels)

    def tap_modules(self) -> list[nn.Module]:
        """A ViT: after ln_pre and after every quarter of the blocks (blocks 3, 6, 9, 12 of a 12-block
        tower, as the LDIFS code taps CLIP); a ModifiedResNet: after each of its four stages."""
        visual = self.backbone
        if hasattr(visual, "transformer") and hasattr(visual, "ln_pre"):
            blocks = list(visual.transformer.resblocks)
            quarter = max(1, len(blocks) // 4)
            return [visual.ln_pre, *blocks[quarter - 1::quarter]]
        if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):
            return [getattr(visual, f"layer{i}") for i in range(1, 5)]
        return []


@register_architecture("open_clip")
def _build_open_clip(arg: str, image_size: int | None, load_weights: bool, spec: str) -> OpenClipEncoder:
    import open_clip

    arch, _, weights = arg.partition(":")
    if not arch:
        raise ProxyFDAError("open_clip specs look like 'open_clip:<arch>:<tag|path|none>', e.g. 'open_clip:ViT-B-32:none'")
    if arch not in open_clip.list_models():
        raise ProxyFDAError(f"open_clip has no architecture '{arch}'; known ones include "
                            f"{', '.join(open_clip.list_models()[:12])}, ...")
    weights = weights or "none"
    pretrained: str | None = None
    if load_weights and weights.lower() != "none":
        pretrained = weights
        if not Path(weights).expanduser().exists():
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if weights not in tags:
                raise ProxyFDAError(
                    f"'{weights}' is neither a file nor a pretrained tag of open_clip {arch} "
                    f"(tags: {', '.join(tags) or 'none'})")
            check_hub_weights(arch, weights)
        else:
            pretrained = str(Path(weights).expanduser())
    try:
        model = open_clip.create_model(arch, pretrained=pretrained, device="cpu")
    except RuntimeError as exc:
        if pretrained and Path(pretrained).exists():
            raise ProxyFDAError(f"checkpoint '{pretrained}' does not fit open_clip architecture {arch}: "
                                f"{first_line(exc)}") from exc
        raise
    except Exception as exc:  # network failures surface as many exception types
        if pretrained and not Path(pretrained).exists():
            raise ProxyFDAError(
                f"could not fetch the pretrained weights '{pretrained}' for open_clip {arch} from the hub "
                f"({type(exc).__name__}: {first_line(exc)}). This needs the internet; offline, download the "
                f"file elsewhere and pass its path: 'open_clip:{arch}:/path/to/weights'") from exc
        if pretrained:
            raise ProxyFDAError(f"could not load '{pretrained}' as open_clip {arch} weights: "
                                f"{type(exc).__name__}: {first_line(exc)}") from exc
        raise
    cfg = model.visual.preprocess_cfg
    native = int(cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0])
    if image_size and image_size != native:
        # ViT and ModifiedResNet towers carry positional embeddings of a fixed grid
        raise ProxyFDAError(f"open_clip {arch} takes {native} px inputs, not {image_size} px: set the input "
                            "resolution to 0 (each encoder's own) or to that size")
    size = native
    norm = PixelNorm(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    dim = int(model.visual.output_dim)
    return OpenClipEncoder(spec, f"open_clip {arch}", model.visual, feature_dim=dim, image_size=size,
                           pixel_norm=norm, clip_model=model, arch=arch)


#: seconds to wait for the host of a pretrained tag's weights before calling it unreachable
HUB_CONNECT_TIMEOUT = 3.0


def check_hub_weights(arch: str, tag: str) -> None:
    """Refuse at once, with a sentence, an open_clip tag whose weights must be downloaded but cannot be.

    Weights in the local cache need no network. Otherwise open_clip's download retries an unreachable
    host for about a minute before failing (measured: 60 s for ``RN50:openai`` offline), so the
    host is tried here first, with a short timeout (``HF_HUB_OFFLINE`` set counts as unreachable).
    """
    import open_clip

    url, cached = _tag_weights_source(open_clip.get_pretrained_cfg(arch, tag))
    reason = None if cached or url is None else _unreachable(url)
    if reason:
        raise ProxyFDAError(
            f"open_clip {arch} with the '{tag}' weights needs the internet for its first download: the weights "
            f"are not in the local cache and {reason}. Connect once to download them, or download the file on "
            f"another machine and pass its path instead: 'open_clip:{arch}:/path/to/weights.pt'")


def _tag_weights_source(cfg: dict) -> tuple[str | None, bool]:
    """Where open_clip would download a tag's weights from (a URL), and whether they are cached already.

    Follows open_clip's own order: the Hugging Face hub when the tag names a hub file (a
    ``.safetensors`` twin counts too), else the tag's URL into ``~/.cache/clip``.
    """
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, has_hf_hub

    if cfg.get("file"):
        return None, True
    if cfg.get("hf_hub") and has_hf_hub():
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        names = {filename, str(Path(filename).with_suffix(".safetensors")), HF_SAFE_WEIGHTS_NAME}
        cached = any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)
        return constants.ENDPOINT, cached
    url = cfg.get("url") or None
    return url, bool(url) and (Path("~/.cache/clip").expanduser() / Path(url).name).is_file()


def _unreachable(url: str) -> str | None:
    """Why the host serving ``url`` cannot be reached now (through the proxy the environment names, if
    any), or None when it accepts a connection within HUB_CONNECT_TIMEOUT."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    outcome = [f"{host} did not answer within {HUB_CONNECT_TIMEOUT:.0f} s"]

    def attempt() -> None:  # on a thread: a stuck name lookup ignores the socket's timeout
        try:
            socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT).close()
            outcome[0] = None
        except OSError as exc:
            outcome[0] = f"{host} cannot be reached ({first_line(exc)})"

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(HUB_CONNECT_TIMEOUT)
    return outcome[0]


# ---------------------------------------------------------------------------------------------
# checkpoints


def read_checkpoint(path: str | Path) -> dict:
    """Load a tensor checkpoint safely (``weights_only``), with a clear error for anything else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ProxyFDAError(f"checkpoint file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a non-checkpoint file fails in many ways inside the unpickler
        raise ProxyFDAError(f"'{path}' is not a readable PyTorch checkpoint ({first_line(exc)}); "
                            "give a .pt/.pth file saved with torch.save") from exc
    if not isinstance(state, dict):
        raise ProxyFDAError(f"'{path}' holds a {type(state).__name__}, not a state dict")
    return state


def load_state_checked(module: nn.Module, state: dict, *, arch: str, source: str) -> None:
    """load_state_dict(strict) with an error that names the architecture and the file."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                   if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatches (e.g. {'; '.join(wrong_shape[:2])})")
        raise ProxyFDAError(f"checkpoint '{source}' does not fit architecture {arch}: " + ", ".join(parts))
    module.load_state_dict(state, strict=True)
