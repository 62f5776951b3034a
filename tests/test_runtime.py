"""blendstudy.runtime: the P2 candidates per device, applying a setting in-process, launching a
setting in its own process, the sweep and its best setting written out."""

from __future__ import annotations

import json
import os
import subprocess
from types import SimpleNamespace

import pytest
import torch

from blendstudy import runtime as rt
from blendstudy.runtime import (
    RuntimeConfig,
    SweepResult,
    apply_in_process,
    best_of,
    current_runtime,
    launch,
    load_runtime,
    run_sweep,
    runtime_candidates,
    write_best_runtime,
)
from conftest import shared_fixture


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
    assert [c.name for c in cands] == ["threads=1", "threads=2", "threads=4", "threads=4+bind"]
    assert [c.torch_threads for c in cands] == [1, 2, 4, 4]
    assert [c.env["OMP_NUM_THREADS"] for c in cands] == ["1", "2", "4", "4"]
    assert cands[-1].cpu_cores == [0, 1, 2, 3] and all(c.cpu_cores is None for c in cands[:-1])
    assert all(c.cudnn_benchmark is None and c.tf32 is None for c in cands)
    one = runtime_candidates(torch.device("cpu"), cores=[5])
    assert [c.name for c in one] == ["threads=1"]
    assert len(runtime_candidates(torch.device("cpu"), cores=[0, 1, 2, 3], limit=2)) == 2


def test_cpu_candidates_default_to_this_process_cores():
    cores = sorted(os.sched_getaffinity(0))
    cands = runtime_candidates(torch.device("cpu"))
    assert max(c.torch_threads for c in cands) == len(cores)
    if len(cores) > 1:
        assert cands[-1].cpu_cores == cores


def test_cuda_candidates():
    cands = runtime_candidates(torch.device("cuda"), cores=[0, 1])
    assert [(c.cudnn_benchmark, c.tf32) for c in cands] == [(False, False), (True, False), (True, True),
                                                            (True, True)]
    assert cands[-1].env == {"OMP_NUM_THREADS": "1"} and cands[-1].cpu_cores == [0, 1]
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
def test_launch_runs_the_cli():
    core = min(os.sched_getaffinity(0))
    proc = launch(RuntimeConfig("t", env={"BLENDSTUDY_TEST_X": "1"}, cpu_cores=[core]), ["weights", "--help"],
                  timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--weights" in proc.stdout


def test_launch_passes_env_cores_and_setting(monkeypatch):
    seen = {}

    def fake_run(cmd, **kw):
        seen.update(kw, cmd=cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(rt.subprocess, "run", fake_run)
    cfg = RuntimeConfig("TQ=2", env={"TASK_QUEUE_ENABLE": "2"}, cpu_cores=[0])
    launch(cfg, ["bench", "--x"], timeout=5)
    assert seen["cmd"][1:] == ["-m", "blendstudy", "bench", "--x"]
    assert seen["env"]["TASK_QUEUE_ENABLE"] == "2"
    assert RuntimeConfig.from_dict(json.loads(seen["env"]["BLENDSTUDY_RUNTIME"])) == cfg
    assert seen["env"]["PATH"] == os.environ["PATH"]  # the rest of the environment is kept
    assert callable(seen["preexec_fn"]) and seen["timeout"] == 5


def test_current_runtime(monkeypatch):
    monkeypatch.delenv("BLENDSTUDY_RUNTIME", raising=False)
    assert current_runtime() is None
    cfg = RuntimeConfig("threads=1", env={"OMP_NUM_THREADS": "1"}, torch_threads=1)
    monkeypatch.setenv("BLENDSTUDY_RUNTIME", json.dumps(cfg.to_dict()))
    assert current_runtime() == cfg


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


def test_run_sweep_reports_a_failing_setting(tmp_path, monkeypatch):
    def fake_launch(cfg, argv, timeout=None):
        out = argv[argv.index("--output") + 1]
        if cfg.name == "bad":
            return subprocess.CompletedProcess(argv, 2, "", "line 1\nblendstudy: no such image\n")
        with open(out, "w") as fh:
            json.dump({"extra": {"latency": {"p50": 10.0, "mean": 11.0, "p99": 15.0}}}, fh)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(rt, "launch", fake_launch)
    res = run_sweep([RuntimeConfig("bad"), RuntimeConfig("good")], ["--x"], tmp_path / "sweep", progress=False)
    assert [r.config.name for r in res] == ["bad", "good"]
    assert res[0].p50_ms is None and "no such image" in res[0].error
    assert (res[1].p50_ms, res[1].mean_ms, res[1].p99_ms) == (10.0, 11.0, 15.0)
    assert res[1].results_path == str(tmp_path / "sweep" / "result_01.json")
    assert best_of(res).config.name == "good"


def test_run_sweep_reports_unavailable_cores(tmp_path):
    res = run_sweep([RuntimeConfig("far cores", cpu_cores=[100000])], ["--help"], tmp_path, progress=False)
    assert res[0].p50_ms is None and res[0].error


SMALL_CONFIG = """_BASE_: {base}
INPUT:
  MIN_SIZE_TEST: 256
  MAX_SIZE_TEST: 400
"""


@pytest.mark.slow
def test_run_sweep_two_cpu_settings(tmp_path):
    """Two real processes of `bench` on one fixture picture. The fixture's config is used through a
    _BASE_ file that only lowers the test size (800 -> 256) to keep this under ~40 s on 2 loaded cores."""
    root = shared_fixture("adelaidet_blendmask_small")
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_CONFIG.format(base=root / "config.yaml"))
    cands = runtime_candidates(torch.device("cpu"), cores=sorted(os.sched_getaffinity(0)), limit=2)
    assert len(cands) == 2 or len(os.sched_getaffinity(0)) == 1
    argv = ["--config", str(config), "--weights", str(root / "model.pth"), "--device", "cpu",
            "--images", str(root / "images" / "img0.png"), "--warmup", "0"]
    res = run_sweep(cands, argv, tmp_path / "sweep", timeout=120, progress=False)
    assert [r.config for r in res] == cands
    for r in res:
        assert r.error is None, r.error
        assert r.p50_ms > 0 and r.mean_ms > 0 and r.p99_ms >= r.p50_ms
        rec = json.loads(open(r.results_path).read())
        assert rec["params"]["images"] == 1
    best = best_of(res)
    assert best.p50_ms == min(r.p50_ms for r in res)
    paths = write_best_runtime(best, tmp_path / "best")
    assert load_runtime(paths["json"]) == best.config
