"""Model zoo: short names -> timm `arch.tag`, weights, and the preprocessing contract.

`conv_medium` alone is ambiguous in timm (several checkpoints with different input size,
crop and mean/std); every alias here resolves to one full `arch.tag` whose pretrained config
fixes the contract.
"""
from __future__ import annotations

import difflib
import hashlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import DeployError, UsageError
from .preprocess import Preprocess
from .weight_names import rename_foreign

# The five variants of the MNv4 paper, pinned to the checkpoint whose numbers docs/field-notes.md quotes.
PAPER_VARIANTS: dict[str, str] = {
    "conv_small": "mobilenetv4_conv_small.e2400_r224_in1k",
    "conv_medium": "mobilenetv4_conv_medium.e500_r224_in1k",
    "conv_large": "mobilenetv4_conv_large.e600_r384_in1k",
    "hybrid_medium": "mobilenetv4_hybrid_medium.e500_r224_in1k",
    "hybrid_large": "mobilenetv4_hybrid_large.e600_r384_in1k",
}
MNV4_PREFIX = "mobilenetv4_"
TIMM_PREFIX = "timm:"
# timm model classes whose blocks canonicalize knows (MobileNet-V3 / EfficientNet family).
SUPPORTED_TIMM_CLASSES = ("MobileNetV3", "EfficientNet")

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a resolved timm `arch.tag` plus user overrides."""

    name: str  # what the user typed
    timm_name: str  # arch.tag
    num_classes: int | None = None
    img_size: int | None = None

    @property
    def arch(self) -> str:
        return self.timm_name.split(".", 1)[0]


def mnv4_short_names() -> list[str]:
    """Every MNv4 architecture timm knows, by its short name (without `mobilenetv4_`)."""
    import timm

    return sorted(n[len(MNV4_PREFIX):] for n in timm.list_models(MNV4_PREFIX + "*"))


def _default_tag(arch: str) -> str:
    import timm

    tagged = timm.list_models(arch, pretrained=True)
    return tagged[0] if tagged else arch


def resolve(name: str, num_classes: int | None = None, img_size: int | None = None) -> ModelSpec:
    """Turn a user's model name into a `ModelSpec`, suggesting close names when unknown."""
    import timm

    if num_classes is not None and num_classes < 1:
        raise UsageError(f"--num-classes {num_classes}: must be at least 1")
    if img_size is not None and not 32 <= img_size <= 1024:
        raise UsageError(f"--img-size {img_size}: must be between 32 and 1024")
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX):]
        arch = timm_name.split(".", 1)[0]
        if arch not in timm.list_models():
            close = difflib.get_close_matches(arch, timm.list_models("*mobilenet*") + timm.list_models("*efficientnet*"), 3)
            raise UsageError(f"unknown timm model {arch!r}", f"did you mean {', '.join(close)}?" if close else "see timm.list_models()")
        if "." not in timm_name:
            timm_name = _default_tag(arch)
        return ModelSpec(name, timm_name, num_classes, img_size)
    base, _, tag = name.partition(".")
    if base in PAPER_VARIANTS and not tag:
        return ModelSpec(name, PAPER_VARIANTS[base], num_classes, img_size)
    shorts = mnv4_short_names()
    if base.startswith(MNV4_PREFIX):
        base = base[len(MNV4_PREFIX):]
    if base in shorts:
        arch = MNV4_PREFIX + base
        timm_name = f"{arch}.{tag}" if tag else (PAPER_VARIANTS.get(base) or _default_tag(arch))
        if tag and timm_name not in timm.list_pretrained(arch + ".*") :
            known = [n.split(".", 1)[1] for n in timm.list_pretrained(arch + ".*")]
            raise UsageError(f"unknown checkpoint tag {tag!r} for {base}", f"known tags: {', '.join(known) or 'none'}")
        return ModelSpec(name, timm_name, num_classes, img_size)
    close = difflib.get_close_matches(base, sorted(set(shorts) | set(PAPER_VARIANTS)), 3, 0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `mnv4-deploy models` for the list"
    raise UsageError(f"unknown model {name!r}", hint)


def contract_for(spec: ModelSpec) -> Preprocess:
    """The preprocessing contract from the checkpoint's pretrained config."""
    import timm

    cfg = timm.get_pretrained_cfg(spec.timm_name)
    if cfg is None:
        cfg = timm.get_pretrained_cfg(spec.arch) or {}
    return Preprocess.from_timm_cfg(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg, spec.img_size)


def build(spec: ModelSpec, pretrained: bool = False) -> Any:
    """Create the timm model in eval mode, exportable (no fused attention) and unweighted."""
    import timm

    kwargs: dict[str, Any] = {"exportable": True}
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    try:
        model = timm.create_model(spec.timm_name, pretrained=pretrained, **kwargs)
    except Exception as exc:
        if not pretrained:
            raise
        raise DeployError(f"could not fetch pretrained weights for {spec.timm_name}: {type(exc).__name__}",
                          "this needs the Hugging Face hub; offline, download once and pass --weights PATH") from None
    family = type(model).__name__
    if family not in SUPPORTED_TIMM_CLASSES:
        raise UsageError(f"{spec.timm_name} is a {family}, not a MobileNet-V3/EfficientNet-family model",
                         "pass an MNv4 name or timm:<mobilenetv3/efficientnet model>")
    return model.eval()


# ---- weights --------------------------------------------------------------------------------

_CHECKPOINT_KEYS = ("state_dict_ema", "state_dict", "model")


def _read_weight_file(path: Path) -> Mapping[str, Any]:
    import torch

    if not path.exists():
        raise UsageError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UsageError(f"--weights {path}: not a readable safetensors file ({exc})",
                             "re-download or re-save the weights") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UsageError(f"--weights {path}: the pickle holds more than plain weights ({str(exc).splitlines()[0]})",
                         "re-save with torch.save(model.state_dict(), path) or use .safetensors") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise UsageError(f"--weights {path}: truncated or not a PyTorch checkpoint ({str(exc).splitlines()[0]})",
                         "check the file is complete") from None
    if not isinstance(data, Mapping):
        raise UsageError(f"--weights {path}: holds a {type(data).__name__}, not a state dict",
                         "save model.state_dict()")
    for key in _CHECKPOINT_KEYS:
        if key in data and isinstance(data[key], Mapping):
            return data[key]
    return data


def load_weights(model: Any, path: str | Path, log: Log | None = None) -> str:
    """Load a timm-format state dict into `model`; return the file's sha256.

    Mismatches are reported as missing/unexpected keys and shape differences, by name. A file
    under a known foreign naming (EfficientNet-PyTorch) is mapped onto timm's names by
    position, verified tensor by tensor (see weight_names).
    """
    import torch

    path = Path(path)
    state = _read_weight_file(path)
    tensors = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    bad_types = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad_types:
        raise UsageError(f"--weights {path}: entries that are not tensors: {bad_types[:3]}", "save model.state_dict()")
    own = model.state_dict()
    if set(tensors) != set(own):
        renamed = rename_foreign(tensors, model, f"--weights {path}")
        if renamed is not None:
            tensors, naming = renamed
            (log or (lambda _m: None))(f"weights: {naming} parameter names mapped onto timm's by position "
                                       f"({len(tensors)} tensors, each one's kind and shape verified)")
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(tensors)) if tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first: {shapes[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise UsageError(f"--weights {path} does not match the architecture: " + "; ".join(parts),
                         "pick the model these weights were trained for, or --num-classes")
    model.load_state_dict(tensors, strict=True)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_layer_scales(model: Any, value: float = 1.0) -> int:
    """Set every LayerScale gamma of a random-init model to `value`; returns how many.

    timm initialises LayerScale to 1e-5, so in an untrained hybrid the attention and UIR
    branches contribute ~1e-5 of the output and parity would never look at them. Trained
    checkpoints carry O(0.1-1) gammas; this gives random-init models the same property.
    """
    import torch

    count = 0
    for module in model.modules():
        gamma = getattr(module, "gamma", None)
        if type(module).__name__.startswith("LayerScale") and isinstance(gamma, torch.Tensor):
            with torch.no_grad():
                gamma.fill_(value)
            count += 1
    return count


def recalibrate_batchnorm(model: Any, batches: Any, variance_floor: float = 1.0) -> int:
    """Re-estimate BatchNorm running statistics from data; returns how many norms were reset.

    Plain random init in eval mode is degenerate (running var 1 against real activations
    gives logits of 1e5-1e7), so parity on it means nothing. Cumulative (momentum=None)
    statistics over the given batches make every activation O(1), like a trained model.

    Each norm's variances are then floored at `variance_floor` x that norm's median variance.
    A random depthwise kernel whose taps nearly cancel yields a near-silent channel; unit
    normalization would amplify it (and any rounding noise in it) a hundredfold, which trained
    networks do not do. Measured on conv_small at 64 px: int8 weight rounding alone gives
    cosine 0.898 without the floor and 0.9975 with it (hybrid_medium: 0.841 -> 0.9988).
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in norms:
        m.train()
    from .quant.threads import single_thread

    # one thread: the batch statistics' reduction order, and so the random-init weights' exact
    # bytes, would otherwise depend on the host's core count
    with torch.no_grad(), single_thread():
        for batch in batches:
            model(batch)
        for m in norms:
            if variance_floor > 0:
                m.running_var.clamp_(min=float(variance_floor * m.running_var.median()))
    for m, momentum in saved:
        m.momentum = momentum
    model.eval()
    return len(norms)
