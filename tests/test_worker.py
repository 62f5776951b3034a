"""Worker processes (blendstudy.measure.worker) and the sweep that uses them: the runtime is in place
before torch starts in the worker, results and errors come back, and P2's settings each get a
process of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from blendstudy.config import ConfigError
from blendstudy.measure import worker as W
from blendstudy.measure.worker import Worker, WorkerError, WorkerSpec, process_info
from blendstudy.runtime import RuntimeConfig, best_of, load_runtime, write_best_runtime
from blendstudy.study import protocol
from blendstudy.study.steps import python_summary

ROOT = Path(__file__).resolve().parents[1]


def test_the_runtime_is_in_place_before_torch_starts():
    core = min(os.sched_getaffinity(0))
    spec = WorkerSpec("t", env={"OMP_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": "1073741824"}, cpu_cores=[core])
    with Worker(spec) as w:
        info = w.call(process_info)
        assert w.call(python_summary)["torch"]  # a second call into the same process
    assert info["pid"] != os.getpid() and info["interactive"] is False
    assert info["torch_threads"] == 1  # OMP_NUM_THREADS read when torch started, not set afterwards
    assert info["cpu_affinity"] == [core]
    assert info["env"]["MALLOC_TRIM_THRESHOLD_"] == "1073741824"


def test_a_kernel_forced_task_queue_does_not_reach_the_worker(monkeypatch):
    # torch_npu sets TASK_QUEUE_ENABLE=0 in an interactive kernel; the worker starts from the
    # environment the process was started with, or from what its spec says
    monkeypatch.setattr(W, "start_environment", lambda: {"TASK_QUEUE_ENABLE": "2"})
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "0")
    with Worker() as w:
        assert w.call(process_info)["env"]["TASK_QUEUE_ENABLE"] == "2"
    with Worker(WorkerSpec(env={"TASK_QUEUE_ENABLE": "1"})) as w:
        assert w.call(process_info)["env"]["TASK_QUEUE_ENABLE"] == "1"


def test_errors_come_back_as_themselves():
    from blendstudy.config import load_config

    with Worker() as w:
        with pytest.raises(ConfigError):
            w.call(load_config, "BlendMask/NoSuchConfig")
        assert w.call(python_summary)  # the worker survives its callee's error
    with pytest.raises(ValueError, match="module-level blendstudy functions"):
        Worker().call(lambda: 1)


def test_cores_this_machine_lacks_are_one_clear_error():
    with pytest.raises(WorkerError, match="none of the cores"):
        Worker(WorkerSpec("far", cpu_cores=[100000]))


def _run(script: str, env: dict, bind=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300, preexec_fn=bind)


def test_torch_npu_forcing_the_queue_off_before_blendstudy_is_imported_does_not_reach_the_worker():
    # an interactive kernel that imported torch_npu BEFORE blendstudy: torch_npu's TASK_QUEUE_ENABLE=0
    # is already in os.environ when blendstudy first looks; the worker still gets what the kernel started with
    out = _run("""
        import json, os, sys
        sys.ps1 = ">>> "                        # an interactive interpreter, as every Jupyter kernel
        os.environ["TASK_QUEUE_ENABLE"] = "0"   # what `import torch_npu` does there
        from blendstudy.measure.worker import Worker, process_info
        with Worker() as w:
            print(json.dumps(w.call(process_info)["env"].get("TASK_QUEUE_ENABLE")))
        """, {"TASK_QUEUE_ENABLE": "2"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == "2"


def test_cores_outside_this_process_cpuset_are_one_clear_error():
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores to restrict a process to one of them")
    # a process confined to one core (as a container's cpuset confines it) asks for the other
    out = _run(f"""
        from blendstudy.measure.worker import Worker, WorkerError, WorkerSpec
        try:
            Worker(WorkerSpec("P2 TQ=2+bind", cpu_cores=[{cores[1]}]))
        except WorkerError as exc:
            print("WorkerError:", exc)
        """, {}, bind=lambda: os.sched_setaffinity(0, [cores[0]]))
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("WorkerError:") and f"may use {cores[0]}" in line and "\n" not in line


@pytest.fixture(scope="module")
def ci_study(tmp_path_factory):
    study = protocol.open_study(ROOT / "params" / "ci.yaml", tmp_path_factory.mktemp("run"))
    yield study
    study.close()


@pytest.mark.slow
def test_sweep_runs_each_setting_in_its_own_process(ci_study, tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    cands = [RuntimeConfig("threads=1", env={"OMP_NUM_THREADS": "1"}, torch_threads=1),
             RuntimeConfig(f"threads={len(cores)}", env={"OMP_NUM_THREADS": str(len(cores))},
                           torch_threads=len(cores), cpu_cores=cores[:1] if len(cores) > 1 else None),
             RuntimeConfig("far cores", cpu_cores=[100000])]
    res = protocol.run_sweep(ci_study, cands, "p1", images=1)
    assert [r.config for r in res] == cands
    ok, far = res[:2], res[2]
    assert far.p50_ms is None and "none of the cores" in far.error
    for r in ok:
        assert r.error is None and r.p50_ms > 0 and r.p99_ms >= r.p50_ms
    assert ok[0].process["torch_threads"] == 1
    assert ok[0].process["pid"] != ok[1].process["pid"]
    if len(cores) > 1:
        assert ok[1].process["cpu_affinity"] == cores[:1]
    best = best_of(res)
    assert best.p50_ms == min(r.p50_ms for r in ok)
    assert load_runtime(write_best_runtime(best, tmp_path)["json"]) == best.config


@pytest.mark.slow
def test_a_failing_setting_is_reported_not_fatal(ci_study):
    res = protocol.run_sweep(ci_study, [RuntimeConfig("x")], "p9", images=1)
    assert res[0].p50_ms is None and "p9" in res[0].error
