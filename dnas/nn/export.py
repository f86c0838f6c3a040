"""Deployment export: batch-norm folded into the preceding (transposed) convolutions, then ONNX."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dnas.errors import DnasError

if TYPE_CHECKING:
    import onnx


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a Conv2d/ConvTranspose2d inside a Sequential
    into that convolution (eval-mode statistics); the model must be in eval mode."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d | nn.ConvTranspose2d):
                transpose = isinstance(conv, nn.ConvTranspose2d)
                module[i] = fuse_conv_bn_eval(conv, bn, transpose=transpose)
                module[i + 1] = nn.Identity()
    return model


OPSET = 17


def export_module(model: nn.Module, inputs: list[torch.Tensor], target: Path | BinaryIO,
                  opset: int = OPSET) -> None:  # fmt: skip
    """Write a BN-folded copy of ``model`` (eval mode) to ONNX, every input and output with a
    dynamic batch axis: what ``dnas export`` deploys and ``lut build --runtime onnxruntime``
    times, op by op."""
    model = fold_batchnorm(copy.deepcopy(model).eval())
    names = ["input"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]
    axes = {name: {0: "batch"} for name in [*names, "output"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, tuple(inputs), target if not isinstance(target, Path) else str(target),
            dynamo=False, opset_version=opset, input_names=names, output_names=["output"],
            dynamic_axes=axes,
        )  # fmt: skip


def export_onnx(model: nn.Module, input_hw: tuple[int, int], path: Path, in_channels: int = 3,
                opset: int = OPSET, metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write a BN-folded copy of ``model`` to ONNX with a dynamic batch axis; ``metadata``
    goes into the model's ``metadata_props`` (what it is, what input it expects)."""
    newest = getattr(getattr(torch.onnx, "_constants", None), "ONNX_MAX_OPSET", None)
    if newest is not None and opset > newest:  # else torch prints its whole graph, then fails
        raise DnasError(f"--opset {opset}: this torch {torch.__version__} exports opsets up to "
                        f"{newest} (the default is {OPSET})")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_module(model, [torch.zeros(1, in_channels, *input_hw)], path, opset)
    except OSError as exc:
        raise DnasError(f"{path}: cannot write ({exc.strerror})") from None
    import onnx

    proto = onnx.load(str(path))
    with torch.no_grad():
        shape = copy.deepcopy(model).eval()(torch.zeros(1, in_channels, *input_hw)).shape
    name_output_dims(proto, tuple(shape[1:]))
    if metadata:
        onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
    return path


def name_output_dims(proto: onnx.ModelProto, dims: tuple[int, ...]) -> None:
    """Give the output's non-batch axes their sizes at the export's input size, where the
    exporter left them unnamed (a head that resizes to another tensor's shape)."""
    for dim, size in zip(proto.graph.output[0].type.tensor_type.shape.dim[1:], dims, strict=True):
        if not dim.HasField("dim_value"):
            dim.Clear()
            dim.dim_value = int(size)
