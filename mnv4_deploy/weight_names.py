"""State dicts saved under another library's parameter names, mapped onto timm's by position.

Some published checkpoints of timm architectures use another implementation's names (the
EfficientNet-PyTorch naming, `_blocks.0._depthwise_conv.weight`, for TF-ported EfficientNets).
When such a file holds exactly the tensors timm's model holds, in the same order, every entry
maps one to one. The mapping is accepted only after each position is verified: same count,
same tensor kind (the last name component: weight, bias, running_mean, ...) and same shape;
the first position that differs is named. No per-file table is involved.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import UsageError


@dataclass(frozen=True)
class ForeignNaming:
    """A parameter-naming scheme recognized by one marker key, and the timm models it fits."""

    name: str
    marker: str  # a key every state dict with this naming holds
    timm_arch_prefixes: tuple[str, ...]  # timm architectures that compute what the source computes
    why: str  # shown when the model is not one of them


# EfficientNet-PyTorch's TF ports use TF "SAME" padding and BatchNorm eps 1e-3, which timm's
# tf_efficientnet_* variants reproduce; timm's efficientnet_* (symmetric padding) would load the
# same shapes but compute something else at the borders.
EFFICIENTNET_PYTORCH = ForeignNaming(
    name="EfficientNet-PyTorch", marker="_conv_stem.weight", timm_arch_prefixes=("tf_efficientnet",),
    why="its TF-ported weights need TF 'SAME' padding and BatchNorm eps 1e-3, as timm's tf_efficientnet_* models have")

KNOWN_NAMINGS: tuple[ForeignNaming, ...] = (EFFICIENTNET_PYTORCH,)


def detect_naming(keys: Any) -> ForeignNaming | None:
    """The foreign naming these state-dict keys use, or None."""
    keys = set(keys)
    return next((n for n in KNOWN_NAMINGS if n.marker in keys), None)


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_by_position(source: Mapping[str, Any], target: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Rename `source`'s tensors to `target`'s keys, position by position, after verifying each.

    Raises a `UsageError` naming the first position whose kind or shape differs, or the counts.
    """
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise UsageError(f"{origin}: {len(src)} tensors in the file, {len(dst)} in the model; "
                         "a by-position mapping needs the same count",
                         "pick the model these weights were trained for")
    mapped: dict[str, Any] = {}
    for i, ((skey, sval), (dkey, dval)) in enumerate(zip(src, dst)):
        if _kind(skey) != _kind(dkey) or tuple(sval.shape) != tuple(dval.shape):
            raise UsageError(f"{origin}: does not map onto the model by position; first mismatch at tensor {i}: "
                             f"file {skey} {tuple(sval.shape)} vs model {dkey} {tuple(dval.shape)}",
                             "pick the model these weights were trained for")
        mapped[dkey] = sval
    return mapped


def timm_arch(model: Any) -> str | None:
    """The timm architecture name a model was created as, when timm recorded it."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") if isinstance(cfg, Mapping) else getattr(cfg, "architecture", None)


def rename_foreign(tensors: Mapping[str, Any], model: Any, origin: str) -> tuple[dict[str, Any], str] | None:
    """(tensors under the model's names, naming used) when the file uses a known foreign naming.

    Returns None when the file's keys use no known foreign naming (the caller reports the
    plain name differences). Refuses a foreign naming on a model it does not fit.
    """
    naming = detect_naming(tensors)
    if naming is None:
        return None
    arch = timm_arch(model) or type(model).__name__
    if not arch.startswith(naming.timm_arch_prefixes):
        fits = ", ".join(p + "*" for p in naming.timm_arch_prefixes)
        raise UsageError(f"{origin}: uses {naming.name} parameter names, which map only onto timm's {fits}, "
                         f"not {arch}", f"{naming.why}; pass --model timm:<one of those>")
    return map_by_position(tensors, model.state_dict(), origin), naming.name
