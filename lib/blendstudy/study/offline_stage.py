"""P6 as the notebook kernel runs it: which variants to make, which engine runs which, one fresh worker
per backend, the PyTorch recipe they are paired against (blendstudy.study.offline holds the steps
that run inside the workers).

``study`` is the protocol's Study (blendstudy.study.protocol): only its ``call``, ``results``,
``spec``, ``weights`` and ``random_weights`` are used here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from blendstudy.measure.roofline import RooflineRow
from blendstudy.measure.worker import Worker, WorkerSpec
from blendstudy.results import ExtrasResult, OfflineResult, PaddingStageResult
from blendstudy.study import offline, offline_int8
from blendstudy.study.offline import OfflineSettings

__all__ = ["bf16_variant", "fastest_pytorch", "int8_variants", "recipe_roofline", "run_offline"]


def int8_variants(call: Callable[..., Any], s: OfflineSettings, exports: List[Dict[str, Any]],
                  errors: Dict[str, str]) -> List[Dict[str, Any]]:
    """The int8 variants the settings ask for, each made by ``call(fn, *args)`` in the stage's worker:
    ONNX Runtime's QDQ of every export, NNCF's of the dynamic export fixed to every padded size. A
    method that fails (a missing calibration split, a quantizer error) is one line in ``errors``."""
    made: List[Dict[str, Any]] = []
    host, n = s.host_recipe, s.calibration_images
    for method in s.int8:
        try:
            if method == "onnxruntime":
                made += [call(offline.quantize_variant, e, host, n) for e in exports]
                continue
            dynamic = next((e for e in exports if e["kind"] == "dynamic"), None) \
                or call(offline.export_variant, "dynamic", host)
            made.append(call(offline_int8.nncf_variant, dynamic, call(offline.padded_sizes, host), host, n, method))
        except Exception as exc:
            errors[f"int8 {method}"] = str(exc).splitlines()[0]
    return made


def bf16_variant(exports: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The fp32 export run by OpenVINO with bfloat16 inference precision (the precision best_cpu's
    half switches give the network on the same CPU): the static export per padded size where there is
    one, else the dynamic one; the same model files, nothing exported again."""
    fp32 = [e for e in exports if e["kind"] in ("static", "dynamic")]
    if not fp32:
        return None
    e = min(fp32, key=lambda e: e["kind"] != "static")
    return {**e, "kind": f"{e['kind']}-bf16", "precision": "bf16", "export_s": 0.0}


def _p4_extras(study: Any) -> Optional[ExtrasResult]:
    """P4's extras of this run, where P4 ran them (read once per P6)."""
    p4 = study.results("p4_pad64")
    return p4.extras if isinstance(p4, PaddingStageResult) else None


def fastest_pytorch(study: Any, spec: WorkerSpec, host_recipe: str, named: Optional[str] = None,
                    extras: Optional[ExtrasResult] = None) -> str:
    """The PyTorch recipe P6 is paired against: ``offline.compare_recipe`` when the params name one,
    else this run's fastest -- P4's fastest extra (its tail recipe, from ``extras``) where P4 ran,
    else the faster of the host recipe and p4 measured now."""
    if named:
        return str(named)
    if extras is not None and extras.tail_recipe:
        return extras.tail_recipe
    return study.call(spec, offline.fastest_recipe, list(dict.fromkeys([host_recipe, "p4"])))


def recipe_roofline(study: Any, spec: WorkerSpec, recipe: str, extras: Optional[ExtrasResult]) -> List[RooflineRow]:
    """The roofline rows of the PyTorch recipe the backends are paired against: P4's, where its
    extras measured that recipe (same machine, same functions), else measured now in the stage's worker."""
    rows = [r for r in (extras.roofline if extras is not None else []) if r.pipeline == recipe]
    return rows or study.call(spec, offline.recipe_rows, recipe)


def _variants(study: Any, spec: WorkerSpec, s: OfflineSettings, out: OfflineResult) -> List[Dict[str, Any]]:
    exports = [study.call(spec, offline.export_variant, kind, s.host_recipe) for kind in s.shapes]
    exports += int8_variants(lambda fn, *a: study.call(spec, fn, *a), s, exports, out.errors)
    bf16 = bf16_variant(exports) if s.bf16 else None
    if bf16 is not None:
        exports.append(bf16)
    elif s.bf16_why:
        out.notes["bf16 variant not made"] = s.bf16_why
    out.exports = [{k: v for k, v in e.items() if k != "process"} for e in exports]
    return exports


def run_offline(study: Any, spec: WorkerSpec) -> OfflineResult:
    """P6 with the stage's worker ``spec``: export the dense part (static per padded size and/or
    dynamic; int8 and bf16 where asked), then each offline backend in a FRESH worker of its own
    (offline.measure_backend), the roofline of the PyTorch recipe they are paired against (P4's where
    it has it), and the
    peak memory of the baseline and that recipe, each alone in a fresh process. An engine that is
    not installed (or cannot load its model) is reported in ``errors`` and the rest goes on."""
    s: OfflineSettings = study.call(spec, offline.settings)
    out = OfflineResult(host_recipe=s.host_recipe, weights=study.weights, random_weights=study.random_weights)
    extras = _p4_extras(study)
    out.fastest = fastest_pytorch(study, spec, s.host_recipe, s.compare_recipe, extras)
    exports = _variants(study, spec, s, out)
    fresh = WorkerSpec(label="p6", env=spec.env, cpu_cores=spec.cpu_cores)
    for engine in s.backends:
        for e in exports:
            if not offline_int8.runs_on(engine, e):
                continue
            try:
                if engine == "om":
                    e = study.call(spec, offline.compile_om, e)
                with Worker(fresh) as w:
                    out.add_backend(w.call(offline.measure_backend, study.spec, engine, e, s.host_recipe, out.fastest))
            except Exception as exc:  # BackendError (engine not installed ...), a dead worker
                out.errors[f"{engine} {e['kind']}"] = str(exc).splitlines()[0]
    if out.backends:  # the PyTorch recipe they are paired against, first in the table
        out.roofline[:0] = recipe_roofline(study, spec, out.fastest, extras)
    for recipe in dict.fromkeys(["baseline", out.fastest]):
        with Worker(fresh) as w:
            out.memory.insert(0 if recipe == "baseline" else 1, w.call(offline.measure_memory, study.spec, recipe))
    return out
