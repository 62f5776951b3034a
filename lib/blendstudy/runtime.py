"""P2 runtime settings: the candidates per device, how a setting starts a worker process
(TASK_QUEUE_ENABLE, OMP_NUM_THREADS and core binding are read when a process starts: each setting
is measured in its own worker, blendstudy.study.protocol.run_sweep), what can still be applied
inside a running process, and the best setting written out for the later stages (like the seed's
runtime_best_config.sh)."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from blendstudy.device import cpu_affinity_conf, local_cores


@dataclass
class RuntimeConfig:
    """One runtime setting. env: variables set before the process imports torch/torch_npu;
    cpu_cores: core binding (os.sched_setaffinity) as a list of core ids; torch_threads: intra-op
    threads; cudnn_benchmark / tf32: cuda flags."""

    name: str
    env: Dict[str, str] = field(default_factory=dict)
    cpu_cores: Optional[List[int]] = None
    torch_threads: Optional[int] = None
    cudnn_benchmark: Optional[bool] = None
    tf32: Optional[bool] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> RuntimeConfig:
        return RuntimeConfig(**d)


#: glibc allocator thresholds that keep large freed blocks in the heap (mallopt M_MMAP_THRESHOLD /
#: M_TRIM_THRESHOLD, read from the environment when the process starts)
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def runtime_candidates(device: torch.device, cores: Optional[Sequence[int]] = None,
                       limit: Optional[int] = None) -> List[RuntimeConfig]:
    """The sweep of the seed's P2 adapted to the device. ``cores``: the cores to bind to -- the
    params' range for this device, else the device's NUMA-local cores (device.local_cores; the
    seed used 144-167 for NPU 1). A binding candidate that would bind to every core this process
    may already use is left out: it changes nothing."""
    cores = sorted(cores) if cores else local_cores(device)
    n = len(cores)
    binds = set(cores) != set(os.sched_getaffinity(0))
    out: List[RuntimeConfig] = []
    if device.type == "npu":
        for tq in ("0", "1", "2"):
            out.append(RuntimeConfig(f"TQ={tq}", env={"TASK_QUEUE_ENABLE": tq}))
        if binds:
            out.append(RuntimeConfig("TQ=2+bind", env={"TASK_QUEUE_ENABLE": "2"}, cpu_cores=cores))
        out.append(RuntimeConfig("TQ=2+bind+OMP=1" if binds else "TQ=2+OMP=1",
                                 env={"TASK_QUEUE_ENABLE": "2", "OMP_NUM_THREADS": "1"},
                                 cpu_cores=cores if binds else None))
        out.append(RuntimeConfig("TQ=2+CPU_AFFINITY_CONF=1+OMP=1",
                                 env={"TASK_QUEUE_ENABLE": "2", "CPU_AFFINITY_CONF": "1", "OMP_NUM_THREADS": "1"}))
        contiguous = bool(cores) and cores == list(range(cores[0], cores[-1] + 1))
        if contiguous and getattr(device, "index", None) is not None:
            # torch_npu binds its own threads to the card's NUMA-local range (custom form, mode 1)
            conf = cpu_affinity_conf(1, {int(device.index): cores})
            out.append(RuntimeConfig("TQ=2+CPU_AFFINITY_CONF=local+OMP=1",
                                     env={"TASK_QUEUE_ENABLE": "2", "CPU_AFFINITY_CONF": conf, "OMP_NUM_THREADS": "1"}))
    elif device.type == "cuda":
        out.append(RuntimeConfig("default", cudnn_benchmark=False, tf32=False))
        out.append(RuntimeConfig("cudnn.benchmark", cudnn_benchmark=True, tf32=False))
        out.append(RuntimeConfig("cudnn.benchmark+TF32", cudnn_benchmark=True, tf32=True))
        out.append(RuntimeConfig("cudnn.benchmark+TF32+bind+OMP=1" if binds else "cudnn.benchmark+TF32+OMP=1",
                                 env={"OMP_NUM_THREADS": "1"}, cpu_cores=cores if binds else None,
                                 cudnn_benchmark=True, tf32=True))
    else:
        threads = sorted({1, max(1, n // 2), n})
        for t in threads:
            out.append(RuntimeConfig(f"threads={t}", env={"OMP_NUM_THREADS": str(t)}, torch_threads=t))
        if n > 1 and binds:
            out.append(RuntimeConfig(f"threads={n}+bind", env={"OMP_NUM_THREADS": str(n)}, torch_threads=n,
                                     cpu_cores=cores))
        # glibc hands multi-MB blocks back to the kernel when freed, so every image page-faults its
        # temporaries in again; these thresholds keep them in the heap. Process-wide and permanent:
        # measurable only in a process of its own, which the sweep and P2's pair now give.
        out.append(RuntimeConfig(f"threads={n}+malloc", env={"OMP_NUM_THREADS": str(n), **MALLOC_KEEP},
                                 torch_threads=n))
    return out[:limit] if limit else out


def apply_in_process(cfg: RuntimeConfig, device: torch.device) -> Dict[str, Any]:
    """Apply what can still be applied inside a running process (affinity, threads, cuda flags).
    Knobs read when a process starts (TASK_QUEUE_ENABLE, OMP_NUM_THREADS ...) are NOT applied here:
    they are the worker process's environment (worker_env)."""
    done: Dict[str, Any] = {"name": cfg.name}
    if cfg.cpu_cores:
        os.sched_setaffinity(0, cfg.cpu_cores)
        done["cpu_cores"] = f"{min(cfg.cpu_cores)}-{max(cfg.cpu_cores)}"
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
        done["torch_threads"] = cfg.torch_threads
    if device.type == "cuda":
        if cfg.cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        if cfg.tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        done.update(cudnn_benchmark=cfg.cudnn_benchmark, tf32=cfg.tf32)
    pending = {k: v for k, v in cfg.env.items() if os.environ.get(k) != v}
    if pending:
        done["env_not_applied_in_process"] = pending
    return done


def worker_env(cfg: Optional[RuntimeConfig], base_env: Optional[Dict[str, str]] = None,
               base_cores: Optional[Sequence[int]] = None) -> Tuple[Dict[str, str], Optional[List[int]]]:
    """(environment variables, cores) a worker process for ``cfg`` starts with: the params'
    fixed runtime (``base_env``, ``base_cores``) under the setting's own. A setting that sets
    torch_threads but no OMP_NUM_THREADS gets OMP_NUM_THREADS too (read when torch starts)."""
    env = dict(base_env or {})
    cores = list(base_cores) if base_cores else None
    if cfg is not None:
        env.update(cfg.env)
        if cfg.torch_threads and "OMP_NUM_THREADS" not in cfg.env:
            env["OMP_NUM_THREADS"] = str(cfg.torch_threads)
        if cfg.cpu_cores:
            cores = list(cfg.cpu_cores)
    return env, cores


@dataclass
class SweepResult:
    """One setting of the sweep, measured in its own worker process (ms); ``process``: what that
    process read back (threads, cores, env); ``error``: why the setting could not be measured."""

    config: RuntimeConfig
    results_path: Optional[str]
    p50_ms: Optional[float]
    mean_ms: Optional[float]
    p99_ms: Optional[float]
    error: Optional[str] = None
    process: Dict[str, Any] = field(default_factory=dict)


def best_of(results: Sequence[SweepResult]) -> Optional[SweepResult]:
    ok = [r for r in results if r.p50_ms is not None]
    return min(ok, key=lambda r: r.p50_ms) if ok else None


def write_best_runtime(best: SweepResult, out_dir: Path) -> Dict[str, Path]:
    """runtime_best.json (read by later stages) and runtime_best_config.sh (source it before a
    run, as the seed did)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "runtime_best.json"
    js.write_text(json.dumps(best.config.to_dict(), indent=2))
    sh = out_dir / "runtime_best_config.sh"
    lines = ["# best runtime setting of the P2 sweep: source this before running the study",
             f"# {best.config.name}: P50 {best.p50_ms:.2f} ms"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in best.config.env.items()]
    if best.config.cpu_cores:
        c = best.config.cpu_cores
        lines.append(f"# bind the process: taskset -c {min(c)}-{max(c)} python ...")
    sh.write_text("\n".join(lines) + "\n")
    return {"json": js, "sh": sh}


def load_runtime(path: Optional[Path]) -> Optional[RuntimeConfig]:
    if path is None or not Path(path).exists():
        return None
    return RuntimeConfig.from_dict(json.loads(Path(path).read_text()))
