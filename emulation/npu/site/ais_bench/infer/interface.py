"""Emulated ``ais_bench.infer.interface`` (blendstudy's test double, not Ascend's ait tool): InferSession
runs an emulated .om (written by the emulated ``atc``) with ONNX Runtime on the CPU, behind the real
session's interface -- ``InferSession(device_id, om_path)``, ``get_inputs()`` / ``get_outputs()``
descriptors (name, shape, datatype; outputs named ``<node>:<index>:<onnx name>`` as ATC names them),
``infer(feeds, mode="static")`` returning the outputs in the model's order, ``free_resource()``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List, Sequence

import emulated_ascend
import numpy as np

__all__ = ["InferSession"]


class InferSession:
    def __init__(self, device_id: int, model_path: str, acl_json_path: Any = None, debug: bool = False,
                 loop: int = 1) -> None:
        import onnxruntime

        cards = emulated_ascend.visible_cards()
        if not 0 <= int(device_id) < len(cards):
            raise RuntimeError(f"aclrtSetDevice failed: device {device_id} does not exist ({len(cards)} visible)")
        header, graph = emulated_ascend.read_om(model_path)
        if header["soc_version"] != emulated_ascend.MACHINE["soc_version"]:
            raise RuntimeError(f"{model_path}: compiled for {header['soc_version']}, this device is "
                               f"{emulated_ascend.MACHINE['soc_version']}")
        self.device_id = int(device_id)
        self._session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
        inp = self._session.get_inputs()[0]
        shape = [int(d) for d in inp.shape]  # the emulated atc fixed every dimension
        self._inputs = [SimpleNamespace(name=inp.name, shape=shape, datatype="FLOAT")]
        probe = self._session.run(None, {inp.name: np.zeros(shape, np.float32)})
        self._outputs = [SimpleNamespace(name=f"node_{i}:0:{o.name}", shape=list(a.shape), datatype="FLOAT")
                         for i, (o, a) in enumerate(zip(self._session.get_outputs(), probe))]
        self.freed = False

    def get_inputs(self) -> List[SimpleNamespace]:
        return self._inputs

    def get_outputs(self) -> List[SimpleNamespace]:
        return self._outputs

    def infer(self, feeds: Sequence[np.ndarray], mode: str = "static", custom_sizes: int = 100000,
              out_array: bool = True) -> List[np.ndarray]:
        if self.freed:
            raise RuntimeError("InferSession used after free_resource()")
        if mode != "static" or len(feeds) != 1:
            raise ValueError(f"the emulated session runs one static input, not mode={mode!r} with {len(feeds)} feeds")
        x = np.asarray(feeds[0])
        if list(x.shape) != self._inputs[0].shape or x.dtype != np.float32:
            raise ValueError(f"input {list(x.shape)} {x.dtype}: the om takes {self._inputs[0].shape} float32")
        return [a.reshape(-1) for a in self._session.run(None, {self._inputs[0].name: x})]

    def free_resource(self) -> None:
        self.freed = True
