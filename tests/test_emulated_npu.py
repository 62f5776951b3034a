"""The study's NPU code paths on the emulated Ascend stack (BLENDSTUDY_EMULATE=npu, emulation/npu).

Every test runs its NPU side in a subprocess started with the variable (the stand-in renames torch's
PrivateUse1 device once per process, and this pytest process must stay a plain cpu one):
(a) without the variable nothing of the emulation loads;
(b) P2's candidates are made where torch_npu is (a worker), all 7 of them on npu:1 -- the kernel itself
    cannot even name an npu device (defect: `torch.device("npu")` in the kernel);
(c) the doctor's NPU checks pass on the emulated host, and set_device_called fails when the study's
    device resolution does not make the device current;
(d) `BLENDSTUDY_EMULATE=npu make reproduce PARAMS=params/npu_emulated.yaml`'s study, end to end.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params" / "npu_emulated.yaml"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLENDSTUDY_", "ASCEND_"))}
    env.update(extra)
    return env


def _python(script: str, emulate: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = _env(BLENDSTUDY_EMULATE="npu") if emulate else _env()
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def _last_json(out: subprocess.CompletedProcess):
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_the_variable_nothing_of_the_emulation_loads():
    got = _last_json(_python("""
        import json, os, sys
        import blendstudy, blendstudy.device, blendstudy.doctor, blendstudy.study.protocol
        from blendstudy import device
        device.resolve_device("auto")
        print(json.dumps({"modules": sorted(m for m in ("torch_npu", "torchair", "ais_bench", "emulated_ascend")
                                            if m in sys.modules),
                          "paths": [p for p in sys.path + os.environ["PATH"].split(":") if "emulation" in p],
                          "emulated": device.emulated(), "npu": device.npu_available()}))
        """, emulate=False))
    assert got == {"modules": [], "paths": [], "emulated": False, "npu": False}


def test_p2_candidates_come_from_a_worker_all_seven_on_npu1(tmp_path):
    got = _last_json(_python(f"""
        import json, sys
        from blendstudy.study import protocol
        study = protocol.open_study({str(PARAMS)!r}, {str(tmp_path)!r})
        names = [c.name for c in protocol._candidates(study)]
        study.close()
        print(json.dumps({{"names": names, "kernel_loaded_torch_npu": "torch_npu" in sys.modules}}))
        """))
    assert got["names"] == ["TQ=0", "TQ=1", "TQ=2", "TQ=2+bind", "TQ=2+bind+OMP=1", "TQ=2+CPU_AFFINITY_CONF=1+OMP=1",
                            "TQ=2+CPU_AFFINITY_CONF=local+OMP=1"]
    assert got["kernel_loaded_torch_npu"] is False


def test_the_doctors_npu_checks_pass_on_the_emulated_host():
    out = subprocess.run([sys.executable, "-m", "blendstudy.doctor", "--device", "npu:1", "--json"],
                         capture_output=True, text=True, env=_env(BLENDSTUDY_EMULATE="npu"), cwd=ROOT, timeout=600)
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["profile"] == "npu" and "emulated" in report["profile_reason"]
    for name in ("device_resolves", "torch_npu_loads", "cann_sourced", "task_queue_not_forced_off",
                 "set_device_called", "compile_backend", "offline_runtime", "profile_pins_installed"):
        assert checks[name]["status"] == "pass", checks[name]
    assert report["found"]["cann"] == "8.5.0" and report["found"]["npu_count"] == 8
    assert set(report["found"]["npu_names"]) == {"910B3"} and report["found"]["device_numa_node"] is not None
    assert out.returncode == 0, [c for c in report["checks"] if c["status"] == "fail"]


def test_set_device_called_fails_when_resolving_does_not_make_the_device_current():
    got = _last_json(_python("""
        import json
        from blendstudy import device, doctor
        device.activate = lambda dev: dev   # a study whose device resolution forgets set_device
        print(json.dumps({spec: doctor._check_set_device(spec, device.resolve_device(spec)).status
                          for spec in ("npu:0", "npu:1")}))
        """))
    assert got == {"npu:0": "fail", "npu:1": "fail"}


def test_torch_npus_deformable_kernel_passes_its_self_check_and_is_chosen():
    # the self-check once built offsets of the wrong size, so "auto" never chose torch_npu's kernel
    got = _last_json(_python("""
        import json
        from blendstudy import device
        from blendstudy.ops.deform_conv import deform_kernel_info
        print(json.dumps(deform_kernel_info(device.resolve_device("npu:0"))))
        """))
    assert got["selected"] == "npu" and "agreed with the plain op" in got["reason"], got


@pytest.mark.slow
def test_the_npu_study_runs_end_to_end_on_the_emulated_stack(tmp_path):
    out = subprocess.run([sys.executable, "-m", "blendstudy", "reproduce", "--params", str(PARAMS),
                          "--out-root", str(tmp_path)], capture_output=True, text=True,
                         env=_env(BLENDSTUDY_EMULATE="npu"), cwd=ROOT, timeout=1500)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    run = tmp_path / "npu_emulated"
    results = {p.stem: json.loads(p.read_text()) for p in (run / "results").glob("*.json")}
    assert len(results) == 11
    for name, rec in results.items():
        env = rec["environment"]
        assert env["emulated"] is True and env["device"].startswith("npu"), (name, env.get("device"))
        assert env["cann"] == "8.5.0" and env["torch_npu"].endswith("+emulated"), name
    assert results["env_check"]["extra"]["device"] == "npu:1"
    assert results["env_check"]["extra"]["kernels"]["deform_conv"]["selected"] == "npu"
    failed = [c for c in results["env_check"]["extra"]["checks"] if c["status"] == "fail"]
    assert not failed, failed
    # P2: every candidate, each in its own worker that read back the task queue it ran with
    p2 = results["p2_runtime"]["extra"]
    assert len(p2["sweep"]) == 7 and not [s for s in p2["sweep"] if s["error"]]
    for s in p2["sweep"]:
        want = int(s["config"]["env"]["TASK_QUEUE_ENABLE"])
        assert s["process"]["task_queue"]["value"] == want, s
        assert s["process"]["interactive"] is False
    # P2's side runs with the sweep's best setting (which one wins is the CPU's timing: any of them)
    best = int(p2["best"]["config"]["env"]["TASK_QUEUE_ENABLE"])
    assert results["p2_runtime"]["effective_runtime"]["p2 side"]["task_queue"]["value"] == best
    assert p2["kernel"]["interactive"] is True and p2["kernel"]["task_queue"]["value"] == 0
    # P3/P4: compiled with the npu backend
    for name in ("p3_compile", "p4_pad64"):
        rows = results[name]["extra"]["compile"]
        assert rows and {r["backend"] for r in rows} == {"npu"}, name
    # P6: ATC + the om backend on the emulated card
    p6 = results["p6_offline"]["extra"]
    assert not p6["errors"], p6["errors"]
    assert {b["runtime"] for b in p6["backends"]} == {"om"}
    assert any((Path(d) / "model.om").is_file() for e in p6["exports"] for d in e["dirs"].values())
    # P5: torchrun, one rank on each emulated card, each bound to its own core
    ranks = results["p5_eval"]["extra"]["ranks"]
    assert sorted(r["device"] for r in ranks) == ["npu:0", "npu:1"]
    assert len({str(r["cores"]) for r in ranks}) == 2
    # no latency reads as an NPU's: the report's first line, every figure's title
    report = (run / "report.html").read_text(encoding="utf-8")
    first = html.unescape(report[report.index("<body"):][:1000])
    assert "EMULATED NPU" in first and "no latency in it is an NPU's" in first
    summary = (run / "summary.ipynb").read_text(encoding="utf-8")
    assert "emulated NPU: CPU timings" in summary
