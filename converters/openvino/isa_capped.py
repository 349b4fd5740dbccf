"""Run an OpenVINO IR on the CPU plugin in *this* process, which was started with an ISA cap.

    ONEDNN_MAX_CPU_ISA=AVX2 python isa_capped.py MODEL.xml INPUT.npy OUTPUT.npy THREADS

oneDNN reads `ONEDNN_MAX_CPU_ISA` once, when its first kernel is dispatched, so a cap needs a
fresh process: `ir.capped_ir_runner` starts this file (by path, with numpy and openvino only)
for each batch it judges. Settings match the judged runner (fp32 inference precision, snippets
off), so the only difference is the CPU class the kernels are allowed to use.
"""
from __future__ import annotations

import sys

import numpy as np


def main(xml: str, inputs: str, outputs: str, threads: str) -> None:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(xml), "CPU", {"INFERENCE_NUM_THREADS": int(threads),
                                                                 "INFERENCE_PRECISION_HINT": "f32",
                                                                 "SNIPPETS_MODE": "DISABLE"})
    request = compiled.create_infer_request()
    batch = np.load(inputs)
    dim = compiled.inputs[0].get_partial_shape()[0]
    step = dim.get_length() if dim.is_static else batch.shape[0]
    logits = [np.asarray(request.infer({0: batch[i:i + step]})[compiled.outputs[0]], np.float32).copy()
              for i in range(0, batch.shape[0], step)]
    np.save(outputs, np.concatenate(logits))


if __name__ == "__main__":
    main(*sys.argv[1:5])
