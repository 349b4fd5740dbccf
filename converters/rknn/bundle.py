"""The RKNN bundle directory: the .rknn, the ONNX it came from, manifest, README, SHA256SUMS.

In the BPU bundle's spirit: everything a board owner needs to run and to audit the model. The
manifest records what was built (platform, toolkit version, the config mean/std, the plan's
hash for int8, where each layer runs) and README.md gives the minimal runtime code for
rknn-toolkit-lite2 (Python on the board) and rknn_api (C).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from mnv4_deploy.checksums import SUMS_FILE, files_of, sha256sums
from mnv4_deploy.errors import UsageError

KIND = "mnv4-deploy rknn bundle"
MANIFEST = "manifest.json"
README = "README.md"


def write_manifest(bundle: Path, manifest: Mapping[str, Any]) -> None:
    (bundle / MANIFEST).write_text(json.dumps({"kind": KIND, **manifest}, indent=2, default=str) + "\n")


def write_sums(bundle: Path) -> None:
    (bundle / SUMS_FILE).write_text(sha256sums(files_of(bundle, skip={SUMS_FILE}), bundle))


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest, or a one-line usage error saying the directory is not an RKNN bundle."""
    try:
        data = json.loads((Path(bundle) / MANIFEST).read_text())
    except (OSError, ValueError):
        raise UsageError(f"{bundle}: not an RKNN bundle (no readable {MANIFEST})",
                         "pass a directory written by --to rknn or rknn-int8") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UsageError(f"{bundle}: {MANIFEST} is not an RKNN bundle manifest", "pass an RKNN bundle directory")
    for key in ("onnx", "rknn"):
        name = (data.get(key) or {}).get("file") if isinstance(data.get(key), dict) else None
        if not isinstance(name, str) or Path(name).name != name or not (Path(bundle) / name).is_file():
            raise UsageError(f"{bundle}: the bundle's {key} file is missing", "export the bundle again")
    return data


def readme(stem: str, manifest: Mapping[str, Any]) -> str:
    """How to run the bundle on a board, and what was checked here (and what was not)."""
    contract, platform = manifest["contract"], manifest["platform"]
    size = contract["crop_size"]
    rknn_file, onnx_file = manifest["rknn"]["file"], manifest["onnx"]["file"]
    mean, std = manifest["config"]["mean_values"], manifest["config"]["std_values"]
    parity = manifest.get("simulator_parity") or "see the export's report.md"
    return f"""# {stem} for Rockchip {platform.upper()} ({manifest['precision']})

`{rknn_file}` was built by rknn-toolkit2 {manifest['toolkit']} from `{onnx_file}`
({manifest['onnx']['source']}), for `target_platform={platform}`.

## Input

RGB pixels, 0-255, {size[1]}x{size[0]} after resizing the short side to {contract['resize_short']}
({contract['interpolation']}) and a centre crop. Mean and std are inside the model
(`mean_values={mean}`, `std_values={std}`): feed the pixels themselves, uint8 NHWC.

## Python on the board (rknn-toolkit-lite2)

```python
import numpy as np
from PIL import Image
from rknnlite.api import RKNNLite

rknn = RKNNLite()
assert rknn.load_rknn("{rknn_file}") == 0
assert rknn.init_runtime() == 0
image = Image.open("photo.jpg").convert("RGB")
scale = {contract['resize_short']} / min(image.size)
image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
left, top = (image.width - {size[1]}) // 2, (image.height - {size[0]}) // 2
pixels = np.asarray(image.crop((left, top, left + {size[1]}, top + {size[0]})), dtype=np.uint8)[None]
logits = rknn.inference(inputs=[pixels])[0].reshape(-1)
print(int(logits.argmax()))
```

## C (rknn_api)

`rknn_init` with the file's bytes; one `rknn_input` with `type = RKNN_TENSOR_UINT8`,
`fmt = RKNN_TENSOR_NHWC`, `size = {size[0]} * {size[1]} * 3`; `rknn_inputs_set`, `rknn_run`,
`rknn_outputs_get` with `want_float = 1` gives the {manifest['num_classes']} logits.

## What was checked, and where

{parity}

These figures come from Rockchip's x86 simulator (`init_runtime()` without a target), the
toolkit's reference for what the NPU computes, not a measurement on a board. To measure on a
board connected over adb: `MNV4_DEPLOY_RKNN_DEVICE=<adb id> mnv4-deploy validate <this folder>
-m <model> --eval-data DIR` runs the same checks through `init_runtime(target="{platform}",
device_id=...)` on the board's NPU.

`SHA256SUMS` covers every file (`sha256sum -c SHA256SUMS`).
"""
