"""blendstudy.runtime: the P2 candidates per device, applying a setting in-process, the environment a
setting starts its worker with, and the best setting written out. (The sweep itself -- one worker per
setting -- is tested in test_worker.py.)"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch

from blendstudy.runtime import (
    RuntimeConfig,
    SweepResult,
    apply_in_process,
    best_of,
    load_runtime,
    runtime_candidates,
    worker_env,
    write_best_runtime,
)


def _npu_device():
    try:
        return torch.device("npu")
    except RuntimeError:  # no torch_npu here: only .type is read
        return SimpleNamespace(type="npu")


@pytest.fixture
def restore_process():
    """Put threads and core binding back as they were."""
    threads = torch.get_num_threads()
    cores = os.sched_getaffinity(0)
    yield
    torch.set_num_threads(threads)
    os.sched_setaffinity(0, cores)


# ---- candidates ---------------------------------------------------------------------------------
def test_cpu_candidates():
    cands = runtime_candidates(torch.device("cpu"), cores=[0, 1, 2, 3])
    assert [c.name for c in cands] == ["threads=1", "threads=2", "threads=4", "threads=4+bind", "threads=4+malloc"]
    assert [c.torch_threads for c in cands] == [1, 2, 4, 4, 4]
    assert [c.env["OMP_NUM_THREADS"] for c in cands] == ["1", "2", "4", "4", "4"]
    assert cands[3].cpu_cores == [0, 1, 2, 3] and all(c.cpu_cores is None for c in cands[:3] + cands[4:])
    assert cands[-1].env["MALLOC_TRIM_THRESHOLD_"] == "1073741824"  # the allocator, measured in its own process
    assert all(c.cudnn_benchmark is None and c.tf32 is None for c in cands)
    one = runtime_candidates(torch.device("cpu"), cores=[5])
    assert [c.name for c in one] == ["threads=1", "threads=1+malloc"]
    assert len(runtime_candidates(torch.device("cpu"), cores=[0, 1, 2, 3], limit=2)) == 2


def test_cpu_candidates_default_to_this_process_cores():
    cores = sorted(os.sched_getaffinity(0))
    cands = runtime_candidates(torch.device("cpu"))
    assert max(c.torch_threads for c in cands) == len(cores)
    # binding to every core the process may already use changes nothing: no such candidate
    assert all(c.cpu_cores is None for c in cands)


def test_cuda_candidates():
    cands = runtime_candidates(torch.device("cuda"), cores=[4, 5])
    assert [(c.cudnn_benchmark, c.tf32) for c in cands] == [(False, False), (True, False), (True, True),
                                                            (True, True)]
    assert cands[-1].env == {"OMP_NUM_THREADS": "1"} and cands[-1].cpu_cores == [4, 5]
    assert all(c.torch_threads is None for c in cands)


def test_npu_candidates():
    cands = runtime_candidates(_npu_device(), cores=list(range(144, 168)))
    assert {c.env.get("TASK_QUEUE_ENABLE") for c in cands} == {"0", "1", "2"}
    assert [c.env for c in cands[:3]] == [{"TASK_QUEUE_ENABLE": q} for q in "012"]
    bound_omp1 = [c for c in cands if c.env.get("OMP_NUM_THREADS") == "1" and c.cpu_cores]
    assert bound_omp1 and bound_omp1[0].cpu_cores == list(range(144, 168))
    assert bound_omp1[0].env["TASK_QUEUE_ENABLE"] == "2"
    assert any(c.env.get("CPU_AFFINITY_CONF") == "1" and c.env.get("OMP_NUM_THREADS") == "1" for c in cands)
    assert all(c.cudnn_benchmark is None and c.torch_threads is None for c in cands)
    assert len({c.name for c in cands}) == len(cands)
    card1 = runtime_candidates(SimpleNamespace(type="npu", index=1), cores=list(range(144, 168)))
    assert {"TASK_QUEUE_ENABLE": "2", "CPU_AFFINITY_CONF": "mode:1,npu1:144-167", "OMP_NUM_THREADS": "1"} in [
        c.env for c in card1]  # torch_npu 2.8's custom form: the mode key is required


def test_runtime_config_dict_round_trip():
    cfg = RuntimeConfig("x", env={"A": "1"}, cpu_cores=[0], torch_threads=2, cudnn_benchmark=True, tf32=False)
    assert RuntimeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---- in-process ---------------------------------------------------------------------------------
def test_apply_in_process_threads_affinity_and_env(restore_process, monkeypatch):
    core = min(os.sched_getaffinity(0))
    monkeypatch.setenv("BLENDSTUDY_TEST_ALREADY", "yes")
    monkeypatch.delenv("BLENDSTUDY_TEST_PENDING", raising=False)
    cfg = RuntimeConfig("t", env={"BLENDSTUDY_TEST_ALREADY": "yes", "BLENDSTUDY_TEST_PENDING": "2"},
                        cpu_cores=[core], torch_threads=1)
    done = apply_in_process(cfg, torch.device("cpu"))
    assert os.sched_getaffinity(0) == {core}
    assert torch.get_num_threads() == 1
    assert done["name"] == "t" and done["cpu_cores"] == f"{core}-{core}" and done["torch_threads"] == 1
    assert done["env_not_applied_in_process"] == {"BLENDSTUDY_TEST_PENDING": "2"}
    assert "BLENDSTUDY_TEST_PENDING" not in os.environ  # reported, not set
    assert "cudnn_benchmark" not in done


def test_apply_in_process_nothing_to_do(restore_process):
    threads, cores = torch.get_num_threads(), os.sched_getaffinity(0)
    assert apply_in_process(RuntimeConfig("empty"), torch.device("cpu")) == {"name": "empty"}
    assert torch.get_num_threads() == threads and os.sched_getaffinity(0) == cores


def test_apply_in_process_cuda_flags():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        done = apply_in_process(RuntimeConfig("c", cudnn_benchmark=True, tf32=True), torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
        assert done["cudnn_benchmark"] is True and done["tf32"] is True
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


# ---- own process --------------------------------------------------------------------------------
def test_worker_env_puts_the_setting_over_the_params_runtime():
    cfg = RuntimeConfig("t", env={"TASK_QUEUE_ENABLE": "2"}, cpu_cores=[3], torch_threads=1)
    env, cores = worker_env(cfg, {"TASK_QUEUE_ENABLE": "1", "MALLOC_TRIM_THRESHOLD_": "1"}, [0, 1])
    # OMP_NUM_THREADS follows torch_threads: the thread pool reads it when torch starts
    assert env == {"TASK_QUEUE_ENABLE": "2", "MALLOC_TRIM_THRESHOLD_": "1", "OMP_NUM_THREADS": "1"}
    assert cores == [3]
    assert worker_env(None, {"A": "1"}, [0]) == ({"A": "1"}, [0])
    assert worker_env(RuntimeConfig("x", env={"OMP_NUM_THREADS": "4"}, torch_threads=1))[0] == {"OMP_NUM_THREADS": "4"}


# ---- sweep results ------------------------------------------------------------------------------
def _result(name, p50, error=None):
    return SweepResult(RuntimeConfig(name), None if error else f"{name}.json", p50,
                       None if p50 is None else p50 + 1, None if p50 is None else p50 + 2, error)


def test_best_of_picks_lowest_p50_and_ignores_errors():
    results = [_result("a", 12.0), _result("b", None, "boom"), _result("c", 9.5), _result("d", 11.0)]
    assert best_of(results).config.name == "c"
    assert best_of([_result("b", None, "boom")]) is None
    assert best_of([]) is None


def test_write_best_runtime_and_load_it_back(tmp_path):
    cfg = RuntimeConfig("TQ=2+bind+OMP=1", env={"TASK_QUEUE_ENABLE": "2", "OMP_NUM_THREADS": "1"},
                        cpu_cores=list(range(144, 168)))
    paths = write_best_runtime(SweepResult(cfg, "r.json", 39.5, 40.0, 45.0), tmp_path / "p2")
    assert paths["json"] == tmp_path / "p2" / "runtime_best.json"
    sh = paths["sh"].read_text().splitlines()
    assert "export TASK_QUEUE_ENABLE=2" in sh and "export OMP_NUM_THREADS=1" in sh
    assert any("taskset -c 144-167" in line for line in sh)
    assert any("39.50 ms" in line for line in sh)
    assert load_runtime(paths["json"]) == cfg
    assert load_runtime(None) is None and load_runtime(tmp_path / "missing.json") is None


def test_write_best_runtime_quotes_values(tmp_path):
    cfg = RuntimeConfig("odd", env={"SOME_FLAGS": "a b"})
    sh = write_best_runtime(SweepResult(cfg, None, 1.0, 1.0, 1.0), tmp_path)["sh"].read_text()
    assert "export SOME_FLAGS='a b'" in sh
