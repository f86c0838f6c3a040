"""The runtimes a latency table can be measured in: eager PyTorch, or ONNX Runtime on the
same ONNX that ``dnas export`` writes (batch norm folded, opset 17).

A runtime turns a module and example inputs into a zero-argument callable that runs one
forward pass; ``cost_models.timing`` times that callable. An op, the head and a whole network
go through the same path, so a table predicts what ``lut check`` and a deployment measure.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from dnas.errors import DnasError
from dnas.nn.export import export_module
from dnas.registry import RUNTIMES


class Runtime(ABC):
    """How a module runs on ``device`` with ``threads`` intra-op threads."""

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    reuse_prepared: ClassVar[bool] = False  # keep a prepared callable for every round

    @property
    def version(self) -> str:
        """The runtime's version, recorded in a table's meta."""
        return torch.__version__

    def __init__(self, device: torch.device, threads: int) -> None:
        if device.type not in self.devices:
            raise DnasError(f"--runtime {self.name}: runs on {', '.join(self.devices)}, "
                            f"not {device.type}")  # fmt: skip
        self.device, self.threads = device, threads

    @abstractmethod
    def prepare(self, module: nn.Module, inputs: list[torch.Tensor]) -> Callable[[], object]:
        """A callable running one forward pass of ``module`` (eval mode) on ``inputs``."""


@RUNTIMES.register("torch")
class TorchEager(Runtime):
    """Eager PyTorch in inference mode, as ``dnas eval`` runs a net."""

    name = "torch"

    def prepare(self, module: nn.Module, inputs: list[torch.Tensor]) -> Callable[[], object]:
        module = module.eval().to(self.device)
        inputs = [x.to(self.device) for x in inputs]

        def forward() -> object:
            with torch.inference_mode():
                return module(*inputs)

        return forward


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """An ONNX Runtime session (all graph optimisations) on the module's ONNX export."""

    name = "onnxruntime"
    # CPU only for now: fed from host arrays, a CUDA session would add a host-device copy to
    # every op entry that a whole network pays once (io_binding would keep them on the device)
    devices = ("cpu",)
    reuse_prepared = True  # an export and a session per op per round would double a build

    @property
    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def prepare(self, module: nn.Module, inputs: list[torch.Tensor]) -> Callable[[], object]:
        import onnxruntime as ort

        buffer = io.BytesIO()
        export_module(module.eval().cpu(), [x.cpu() for x in inputs], buffer)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(buffer.getvalue(), options,
                                       providers=["CPUExecutionProvider"])  # fmt: skip
        names = [i.name for i in session.get_inputs()]
        feeds = {name: x.detach().cpu().numpy() for name, x in zip(names, inputs, strict=True)}
        return lambda: session.run(None, feeds)


def get_runtime(name: str, device: torch.device, threads: int) -> Runtime:
    """The registered runtime ``name`` on ``device``; a one-line error for an unknown name."""
    return RUNTIMES.get(name)(device, threads)
