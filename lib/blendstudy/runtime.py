"""P2 runtime tuning: candidate settings per device, a sweep that runs each setting in its own
process (TASK_QUEUE_ENABLE is read when torch_npu initialises — NPU_NOTES "Runtime knobs"), and the
best setting written out for the later stages (like the seed's runtime_best_config.sh)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch


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


def runtime_candidates(device: torch.device, cores: Optional[Sequence[int]] = None,
                       limit: Optional[int] = None) -> List[RuntimeConfig]:
    """The sweep of the seed's P2 adapted to the device. `cores`: the NUMA-local cores to bind
    to (the seed used 144-167 for NPU 1); default: all cores this process may use."""
    cores = list(cores) if cores else sorted(os.sched_getaffinity(0))
    n = len(cores)
    out: List[RuntimeConfig] = []
    if device.type == "npu":
        for tq in ("0", "1", "2"):
            out.append(RuntimeConfig(f"TQ={tq}", env={"TASK_QUEUE_ENABLE": tq}))
        out.append(RuntimeConfig("TQ=2+bind", env={"TASK_QUEUE_ENABLE": "2"}, cpu_cores=cores))
        out.append(RuntimeConfig("TQ=2+bind+OMP=1", env={"TASK_QUEUE_ENABLE": "2", "OMP_NUM_THREADS": "1"},
                                 cpu_cores=cores))
        out.append(RuntimeConfig("TQ=2+CPU_AFFINITY_CONF=1+OMP=1",
                                 env={"TASK_QUEUE_ENABLE": "2", "CPU_AFFINITY_CONF": "1", "OMP_NUM_THREADS": "1"}))
    elif device.type == "cuda":
        out.append(RuntimeConfig("default", cudnn_benchmark=False, tf32=False))
        out.append(RuntimeConfig("cudnn.benchmark", cudnn_benchmark=True, tf32=False))
        out.append(RuntimeConfig("cudnn.benchmark+TF32", cudnn_benchmark=True, tf32=True))
        out.append(RuntimeConfig("cudnn.benchmark+TF32+bind+OMP=1", env={"OMP_NUM_THREADS": "1"},
                                 cpu_cores=cores, cudnn_benchmark=True, tf32=True))
    else:
        threads = sorted({1, max(1, n // 2), n})
        for t in threads:
            out.append(RuntimeConfig(f"threads={t}", env={"OMP_NUM_THREADS": str(t)}, torch_threads=t))
        if n > 1:
            out.append(RuntimeConfig(f"threads={n}+bind", env={"OMP_NUM_THREADS": str(n)}, torch_threads=n,
                                     cpu_cores=cores))
    return out[:limit] if limit else out


def apply_in_process(cfg: RuntimeConfig, device: torch.device) -> Dict[str, Any]:
    """Apply what can still be applied inside a running process (affinity, threads, cuda flags).
    Env knobs read at torch_npu import are NOT applied here: use `launch` for those."""
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


def launch(cfg: RuntimeConfig, argv: Sequence[str], timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    """Run `python -m blendstudy <argv>` in a fresh process with the setting's environment and
    core binding (taskset-like, via preexec sched_setaffinity)."""
    env = dict(os.environ)
    env.update(cfg.env)
    env["BLENDSTUDY_RUNTIME"] = json.dumps(cfg.to_dict())
    cores = cfg.cpu_cores

    def bind() -> None:
        if cores:
            os.sched_setaffinity(0, cores)

    return subprocess.run([sys.executable, "-m", "blendstudy", *argv], env=env, preexec_fn=bind,
                          capture_output=True, text=True, timeout=timeout)


def current_runtime() -> Optional[RuntimeConfig]:
    """The setting this process was launched with by `launch`, if any."""
    raw = os.environ.get("BLENDSTUDY_RUNTIME")
    return RuntimeConfig.from_dict(json.loads(raw)) if raw else None


@dataclass
class SweepResult:
    config: RuntimeConfig
    results_path: Optional[str]
    p50_ms: Optional[float]
    mean_ms: Optional[float]
    p99_ms: Optional[float]
    error: Optional[str] = None


def run_sweep(candidates: Sequence[RuntimeConfig], bench_argv: Sequence[str], out_dir: Path,
              timeout: Optional[float] = None, progress: bool = True) -> List[SweepResult]:
    """Run `python -m blendstudy bench <bench_argv> --output <out_dir>/result_<i>.json` once per
    setting, each in its own process. A failing setting is reported, not fatal."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, cfg in enumerate(tqdm(list(candidates), desc="P2 sweep", disable=not progress)):
        path = out_dir / f"result_{i:02d}.json"
        try:
            proc = launch(cfg, ["bench", *bench_argv, "--output", str(path)], timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:  # e.g. binding to cores this machine lacks
            results.append(SweepResult(cfg, None, None, None, None, error=f"{type(exc).__name__}: {exc}"))
            continue
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            results.append(SweepResult(cfg, None, None, None, None, error=" | ".join(tail) or f"rc={proc.returncode}"))
            continue
        stats = json.loads(path.read_text())["extra"]["latency"]
        results.append(SweepResult(cfg, str(path), stats["p50"], stats["mean"], stats["p99"]))
    return results


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
