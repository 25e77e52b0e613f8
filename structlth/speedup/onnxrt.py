"""ONNX export of a fast model, and ONNX Runtime as a second runtime for the bench.

A fast model (the slim net, or the slim net with grouped/sub convs: Gather + grouped Conv in
ONNX) is exported with torch's TorchScript-based exporter (`dynamo=False`: it traces the fx
graphs our BN folding and block layouts produce, and needs no onnxscript), then checked with
`onnx.checker`. `OrtModel` runs it in ONNX Runtime's CPU execution provider with the bench's
thread count, as a callable on torch tensors, so `time_pair` and `verify` treat it like any
engine. The batch dimension is dynamic.
"""

from __future__ import annotations

import importlib
import io
import warnings

import torch
from torch import nn

from structlth.errors import ArtifactError, StructlthError

OPSET = 17
INPUT, OUTPUT = "input", "logits"


def _require(module: str):
    """Import an optional dependency, or say how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise StructlthError(
            f"{module} is not installed: pip install -e '.[onnx]' (make setup does); or set"
            " bench.onnxruntime: false to bench in PyTorch only"
        ) from None


def to_onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    """The ONNX model of `model` (eval mode; traced on x [B, C, H, W]), checked by onnx.checker."""
    onnx = _require("onnx")

    buf = io.BytesIO()
    x = x.contiguous().clone()  # a normal tensor even when x was made under inference_mode
    with warnings.catch_warnings(), torch.no_grad():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (x,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    data = buf.getvalue()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ArtifactError(f"ONNX export of {type(model).__name__} fails onnx.checker: {e}") from e
    return data


def op_types(data: bytes) -> list[str]:
    """The distinct operator types of an ONNX model, sorted."""
    onnx = _require("onnx")

    return sorted({n.op_type for n in onnx.load_from_string(data).graph.node})


class OrtModel:
    """An ONNX model in ONNX Runtime (CPU execution provider, `threads` intra-op threads):
    [B, C, H, W] float32 torch tensor in, logits [B, classes] torch tensor out."""

    def __init__(self, data: bytes, threads: int) -> None:
        ort = _require("onnxruntime")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {INPUT: x.contiguous().numpy()})[0])


def ort_model(model: nn.Module, x: torch.Tensor, threads: int) -> OrtModel:
    """`model` exported (traced on x) and loaded in ONNX Runtime."""
    return OrtModel(to_onnx(model, x), threads)


RUNTIMES = ("torch", "onnxruntime")


def runtime_format(runtime: str, fmt: torch.memory_format) -> torch.memory_format:
    """The memory format a runtime's inputs and timed models take: `fmt` (the one the dense net
    runs fastest in) in PyTorch, contiguous in ONNX Runtime (its graphs take NCHW arrays)."""
    return fmt if runtime == "torch" else torch.contiguous_format


def in_runtime(runtime: str, model: nn.Module, x: torch.Tensor, threads: int):
    """model as a callable of the runtime: itself (PyTorch), or its ONNX export in ONNX Runtime
    (traced on x)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    return model if runtime == "torch" else ort_model(model, x, threads)
