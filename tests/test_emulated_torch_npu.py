"""The emulated torch_npu (emulation/npu/site/torch_npu), blendstudy's stand-in for torch_npu 2.8.

Every check runs in a subprocess with ``PYTHONPATH=emulation/npu/site:lib`` and
``TORCH_DEVICE_BACKEND_AUTOLOAD=0``: the stand-in renames torch's PrivateUse1 device once per process,
and this pytest process must never load it. Each script prints one JSON line the test asserts on.
The interpreters: this one, plus any listed in ``EMULATED_TORCH_NPU_PYTHONS`` (os.pathsep-separated),
e.g. a Python 3.9 venv with torch 2.8.0 -- the real NPU profile's versions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "emulation" / "npu" / "site"
LIB = ROOT / "lib"
PYTHONS = [sys.executable] + [p for p in os.environ.get("EMULATED_TORCH_NPU_PYTHONS", "").split(os.pathsep) if p]
_CLEARED = ("TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "PYTHONPATH", "OMP_NUM_THREADS")


def _run(python: str, script: str, timeout: int = 300, **env_extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLENDSTUDY_", "ASCEND_")) and k not in _CLEARED}
    env.update(PYTHONPATH=os.pathsep.join([str(SITE), str(LIB)]), TORCH_DEVICE_BACKEND_AUTOLOAD="0", **env_extra)
    out = subprocess.run([python, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=timeout)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(params=PYTHONS, ids=lambda p: "this-python" if p == sys.executable else p)
def python(request) -> str:
    return request.param


def test_npu_tensors_device_module_and_memory(python):
    got = _run(python, """
        import copy, gc, json, warnings
        import torch, torch_npu
        import torch.nn.functional as F
        out = {"version": torch_npu.__version__, "torch": torch.__version__, "emulated": torch_npu.EMULATED,
               "device_module": torch.npu is torch_npu.npu,
               "count": torch.npu.device_count(), "available": torch.npu.is_available(),
               "physical": [torch.npu.physical_device(i) for i in range(torch.npu.device_count())],
               "name": torch.npu.get_device_name(1), "internal_format": torch.npu.config.allow_internal_format,
               "cann": torch_npu.npu.utils.get_cann_version(), "initialized_before": torch.npu.is_initialized()}
        try:
            torch.npu.set_device(2)
        except RuntimeError as exc:
            out["set_device_2"] = str(exc)
        torch.npu.set_device("npu:1")
        out["current"] = torch.npu.current_device()
        x = torch.zeros(3, device="npu:1")
        out["zeros"] = [str(x.device), x.device == torch.device("npu", 1), x.is_npu,
                        str(torch.empty(2, device="npu").device)]
        a = torch.arange(12.).reshape(3, 4)
        b = a.to("npu:0")
        out["meta"] = [str(b.device), list(b.shape), list(b.stride()), str(b.dtype), b.is_contiguous()]
        v = b[:, 1]                  # a view: writing through it changes the base
        v.fill_(-1)
        b[2] += 100                  # in place on a slice
        out["alias"] = b.cpu().tolist()
        c = torch.empty(3, 4, device="npu:0"); c.copy_(a, non_blocking=True)
        out["roundtrip"] = [torch.equal(c.cpu(), a), c.to("cpu").device.type,
                            torch.tensor([1, 2], device="npu:0").tolist(),
                            c.sum().item(), torch.empty_like(c).device.index]
        n = a.npu()
        out["ops"] = {
            "nonzero": torch.nonzero(n > 9).cpu().tolist(), "topk": n.topk(2, dim=1).values.cpu().tolist(),
            "sort": torch.sort(n[:, 0], descending=True).values.cpu().tolist(),
            "mask": n[n > 8].cpu().tolist(), "where": torch.where(n > 5, n, torch.zeros_like(n)).cpu().sum().item(),
            "matmul": torch.allclose((n @ n.t()).cpu(), a @ a.t()),
            "einsum": torch.einsum("ij,kj->ik", n, n).device.type,
            "cat": list(torch.cat([n, n]).shape), "stack": list(torch.stack([n, n]).shape),
            "index_select": n.index_select(1, torch.tensor([0, 3], device=n.device)).cpu().tolist(),
            "scatter": torch.zeros(4, device=n.device).scatter_(0, torch.tensor([1, 3], device=n.device),
                                                               torch.ones(2, device=n.device)).cpu().tolist(),
            "mod": (n % 5).cpu()[0].tolist()}
        img = torch.randn(1, 4, 6, 7)
        w = torch.randn(2, 4, 3, 3)
        npu_img, npu_w = img.npu(), w.npu()
        out["nn"] = {
            "conv": float((F.conv2d(npu_img, npu_w, padding=1).cpu() - F.conv2d(img, w, padding=1)).abs().max()),
            "interp": list(F.interpolate(npu_img, size=(9, 9), mode="bilinear", align_corners=False).shape),
            "grid": list(F.grid_sample(npu_img, torch.zeros(1, 2, 3, 2).npu(), align_corners=False).shape),
            "gn": float((F.group_norm(npu_img, 2).cpu() - F.group_norm(img, 2)).abs().max()),
            "bn": F.batch_norm(npu_img, torch.zeros(4).npu(), torch.ones(4).npu()).device.type}
        with torch.autocast("npu", dtype=torch.float16):
            out["autocast"] = str(F.conv2d(npu_img, npu_w).dtype)
        for name, make in (("mixed_npu", lambda: n + n.to("npu:0")), ("mixed_cpu", lambda: n + a),
                           ("channels_last", lambda: torch.empty(1, 3, 4, 4, device="npu",
                                                                 memory_format=torch.channels_last)),
                           ("channels_last_to", lambda: npu_img.contiguous(memory_format=torch.channels_last))):
            try:
                make()
                out[name] = "no error"
            except RuntimeError as exc:
                out[name] = str(exc)
        m = torch.nn.Conv2d(4, 2, 3).to("npu:1")
        m2 = copy.deepcopy(m)
        out["module"] = [str(m.weight.device), str(m2.weight.device), torch.equal(m.weight.cpu(), m2.weight.cpu()),
                         m.weight.data_ptr() != m2.weight.data_ptr()]
        # memory: bytes of live npu tensors per card, peak since reset
        del m, m2
        gc.collect()
        torch.npu.synchronize(1)
        torch.npu.reset_peak_memory_stats(1)
        base = torch.npu.memory_allocated(1)
        t1 = torch.empty(1024, device="npu:1")            # 4 KiB
        t2 = torch.empty(2048, device="npu:1")            # 8 KiB
        del t2
        gc.collect()
        out["memory"] = [torch.npu.memory_allocated(1) - base,
                         torch.npu.max_memory_allocated(torch.device("npu", 1)) - base,
                         torch.npu.memory_allocated(0) > 0]
        e0, e1 = torch.npu.Event(enable_timing=True), torch.npu.Event(enable_timing=True)
        e0.record(); y = n * 2; e1.record(); e1.synchronize()
        out["event_ms"] = e0.elapsed_time(e1) >= 0
        out["stream"] = str(torch.npu.current_stream().device)
        # npu_deformable_conv2d: zero offsets + unit mask = conv2d; x offsets +1 = conv2d of the input shifted left
        # (away from output column 0, where the shifted input's zero padding is a pixel the offsets sample)
        kh = kw = 3
        zero = torch.zeros(1, 3 * kh * kw, 6, 7).npu()
        zero[:, 2 * kh * kw:] = 1
        got, offset_out = torch_npu.npu_deformable_conv2d(npu_img, npu_w, zero, None, kernel_size=[kw, kh],
                                                          stride=[1, 1, 1, 1], padding=[1, 1, 1, 1])
        shift = zero.clone()
        shift[:, :kh * kw] = 1.0
        got_shift, _ = torch_npu.npu_deformable_conv2d(npu_img, npu_w, shift, None, kernel_size=[kw, kh],
                                                       stride=[1, 1, 1, 1], padding=[1, 1, 1, 1])
        shifted = F.pad(img[..., 1:], (0, 1))
        out["dcn"] = [float((got.cpu() - F.conv2d(img, w, padding=1)).abs().max()),
                      float((got_shift.cpu() - F.conv2d(shifted, w, padding=1))[..., 1:].abs().max()),
                      list(offset_out.shape), str(got.device)]
        print(json.dumps(out))
        """, ASCEND_RT_VISIBLE_DEVICES="1,3")
    assert got["version"] == got["torch"].split("+")[0] + ".post0+emulated"
    assert got["emulated"] is True and got["device_module"] is True
    assert got["count"] == 2 and got["physical"] == [1, 3] and got["available"] is True
    assert got["name"] == "Ascend910B3" and got["internal_format"] is False and got["cann"] == "8.5.0"
    assert got["initialized_before"] is False and "invalid device id 2" in got["set_device_2"]
    assert got["current"] == 1
    assert got["zeros"] == ["npu:1", True, True, "npu:1"]  # an index-less npu tensor lands on the current card
    assert got["meta"] == ["npu:0", [3, 4], [4, 1], "torch.float32", True]
    assert got["alias"] == [[0.0, -1.0, 2.0, 3.0], [4.0, -1.0, 6.0, 7.0], [108.0, 99.0, 110.0, 111.0]]
    assert got["roundtrip"] == [True, "cpu", [1, 2], 66.0, 0]
    ops = got["ops"]
    assert ops["nonzero"] == [[2, 2], [2, 3]] and ops["topk"] == [[3, 2], [7, 6], [11, 10]]
    assert ops["sort"] == [8.0, 4.0, 0.0] and ops["mask"] == [9.0, 10.0, 11.0] and ops["where"] == 51.0
    assert ops["matmul"] is True and ops["einsum"] == "npu" and ops["cat"] == [6, 4] and ops["stack"] == [2, 3, 4]
    assert ops["index_select"] == [[0, 3], [4, 7], [8, 11]] and ops["scatter"] == [0, 1, 0, 1]
    assert ops["mod"] == [0.0, 1.0, 2.0, 3.0]
    nn = got["nn"]
    assert nn["conv"] < 1e-5 and nn["gn"] < 1e-5 and nn["interp"] == [1, 4, 9, 9] and nn["grid"] == [1, 4, 2, 3]
    assert nn["bn"] == "npu" and got["autocast"] == "torch.float16"
    assert "at least two devices" in got["mixed_npu"] and "at least two devices" in got["mixed_cpu"]
    contiguous_only = "Only c10::MemoryFormat::Contiguous is supported for creating a npu tensor"
    assert got["channels_last"] == contiguous_only and got["channels_last_to"] == contiguous_only
    assert got["module"] == ["npu:1", "npu:1", True, True]
    assert got["memory"] == [4096, 4096 + 8192, True]
    assert got["event_ms"] is True and got["stream"] == "npu:1"
    assert got["dcn"][0] < 1e-4 and got["dcn"][1] < 1e-4 and got["dcn"][2:] == [[1, 4, 18, 21], "npu:1"]


def _load_runtime():
    """torch_npu/_runtime.py as a module of its own (it does not import torch): its parsing is
    checked in this process without loading the stand-in."""
    spec = importlib.util.spec_from_file_location("emulated_torch_npu_runtime", SITE / "torch_npu" / "_runtime.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SITE))  # for emulated_ascend (the emulated host's facts, standard library only)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(SITE))
    return mod


def test_cpu_affinity_conf_and_task_queue_are_read_as_torch_npu_2_8_reads_them(monkeypatch):
    rt = _load_runtime()
    # the mode key, a bare number as the mode, npuN ranges (one core or a-b), defaults = even share of the cores
    assert rt.parse_affinity_conf("mode:1,npu0:0-23,npu1:24-47", cards=8, cores=192)[:2] == (
        1, [(0, 23), (24, 47)] + [(i * 24, i * 24 + 23) for i in range(2, 8)])
    assert rt.parse_affinity_conf("1", cards=2, cores=8)[:2] == (1, [(0, 3), (4, 7)])
    assert rt.parse_affinity_conf("1,npu1:5", cards=2, cores=8)[:2] == (1, [(0, 3), (5, 5)])
    assert rt.parse_affinity_conf("npu0:0-3", cards=2, cores=8)[:2] == (0, [(0, 3), (4, 7)])
    mode, _, notes = rt.parse_affinity_conf("mode:x,npu0:a-b", cards=1, cores=4)
    assert mode == 0 and len(notes) == 2
    assert rt.parse_affinity_conf("2", cards=4, cores=2)[1] == [(0, -1)] * 4  # more cards than cores: empty shares
    for env, want in (({}, 1), ({"TASK_QUEUE_ENABLE": "2"}, 2), ({"TASK_QUEUE_ENABLE": "0"}, 0),
                      ({"TASK_QUEUE_ENABLE": "2", "ASCEND_LAUNCH_BLOCKING": "1"}, 0)):
        for var in ("TASK_QUEUE_ENABLE", "ASCEND_LAUNCH_BLOCKING"):
            monkeypatch.delenv(var, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert rt._read_task_queue() == want, env
    monkeypatch.delenv("ASCEND_LAUNCH_BLOCKING")
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "3")
    with pytest.raises(RuntimeError, match="TASK_QUEUE_ENABLE should be 0, 1 or 2"):
        rt._read_task_queue()


_RUNTIME_SCRIPT = """
    import json, os, sys, warnings
    if os.environ.get("AS_INTERACTIVE"):
        sys.ps1 = ">>> "                         # what every REPL and Jupyter kernel has
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch, torch_npu
        at_import = os.environ.get("TASK_QUEUE_ENABLE")
        before = torch.npu.is_initialized()
        torch.npu.set_device(torch.npu.device_count() - 1)   # the first device set-up
        os.environ["TASK_QUEUE_ENABLE"] = "1"                # too late: the level was read once
        torch.zeros(1, device="npu")
    print(json.dumps({"tq": torch.npu.task_queue_level(), "at_import": at_import, "before": before,
                      "count": torch.npu.device_count(), "affinity": torch.npu.affinity_applied(),
                      "cores": sorted(os.sched_getaffinity(0)), "warnings": [str(w.message) for w in caught]}))
"""


def test_interactive_import_turns_the_task_queue_off_and_bad_affinity_conf_only_warns(python):
    got = _run(python, _RUNTIME_SCRIPT, AS_INTERACTIVE="1", TASK_QUEUE_ENABLE="2", CPU_AFFINITY_CONF="mode:x",
               BLENDSTUDY_EMULATE_NPUS="3")
    assert got["at_import"] == "0" and got["tq"] == 0 and got["before"] is False and got["count"] == 3
    interactive = "On the interactive interface, the value of TASK_QUEUE_ENABLE is set to 0"
    assert any(w.startswith(interactive) for w in got["warnings"])
    assert any("mode is x" in w for w in got["warnings"])
    assert got["affinity"]["bound"] is None and got["cores"] == sorted(os.sched_getaffinity(0))


def test_task_queue_is_read_once_and_cpu_affinity_conf_binds_at_first_set_up(python):
    core = max(os.sched_getaffinity(0))
    got = _run(python, _RUNTIME_SCRIPT, TASK_QUEUE_ENABLE="2", CPU_AFFINITY_CONF=f"mode:1,npu0:{core}-{core}",
               BLENDSTUDY_EMULATE_NPUS="1")
    assert got["at_import"] == "2" and got["tq"] == 2 and got["count"] == 1
    assert got["affinity"]["mode"] == 1 and got["affinity"]["bound"] == [core] and got["cores"] == [core]
    assert not [w for w in got["warnings"] if "TASK_QUEUE" in w or "CPU_AFFINITY" in w]


def test_compile_backend_npu_recompiles_per_shape_up_to_the_limit(python):
    got = _run(python, """
        import json
        import torch, torch_npu
        import torch._dynamo
        torch._dynamo.config.recompile_limit = 2
        graphs = []
        from torch._dynamo.backends.registry import lookup_backend
        backend = lookup_backend("npu")
        def counting(gm, example_inputs):
            graphs.append([list(t.shape[2:]) for t in example_inputs
                           if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[0] == 1])
            return backend(gm, example_inputs)
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).to("npu:1").eval()
        cm = torch.compile(m, backend=counting, dynamic=False)
        cm_npu = torch.compile(torch.nn.ReLU(), backend="npu", dynamic=False)
        rows = []
        with torch.no_grad():
            for hw in (8, 12, 16):
                x = torch.randn(1, 3, hw, hw).to("npu:1")
                y = cm(x)
                rows.append([list(y.shape), str(y.device), float((y - m(x)).abs().max().cpu())])
            z = cm_npu(torch.randn(2, 2, device="npu:1"))
        print(json.dumps({"rows": rows, "graphs": graphs, "plain": str(z.device)}))
        """)
    assert [r[:2] for r in got["rows"]] == [[[1, 4, hw, hw], "npu:1"] for hw in (8, 12, 16)]
    assert all(r[2] == 0.0 for r in got["rows"])
    assert got["graphs"] == [[[8, 8]], [[12, 12]]]  # one graph per shape; the third shape ran eagerly
    assert got["plain"] == "npu:1"


def test_hccl_process_group_on_two_ranks(python):
    got = _run(python, """
        import json, os, tempfile
        import torch, torch_npu
        import torch.distributed as dist
        import torch.multiprocessing as mp

        def work(rank, path, q):
            torch.npu.set_device(rank)
            dist.init_process_group("hccl", init_method=f"file://{path}", rank=rank, world_size=2)
            x = torch.full((3,), float(rank + 1), device=f"npu:{rank}")
            dist.all_reduce(x)
            dist.barrier()
            gathered = [torch.zeros(3, device=f"npu:{rank}") for _ in range(2)]
            dist.all_gather(gathered, x * (rank + 1))
            b = torch.arange(4.0, device=f"npu:{rank}") * (rank + 1)
            dist.broadcast(b, src=1)
            gloo = dist.new_group(backend="gloo")
            objs = [None, None]
            dist.all_gather_object(objs, {"rank": rank}, group=gloo)
            q.put({"rank": rank, "backend": dist.get_backend(), "sum": x.cpu().tolist(), "device": str(x.device),
                   "gathered": [g.cpu().tolist() for g in gathered], "bcast": b.cpu().tolist(), "objs": objs})
            dist.barrier()
            dist.destroy_process_group()

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        path = os.path.join(tempfile.mkdtemp(), "store")
        procs = [ctx.Process(target=work, args=(r, path, q)) for r in range(2)]
        for p in procs:
            p.start()
        res = sorted((q.get(timeout=120) for _ in procs), key=lambda r: r["rank"])
        for p in procs:
            p.join(60)
        print(json.dumps({"ranks": res, "exit": [p.exitcode for p in procs]}))
        """)
    assert got["exit"] == [0, 0]
    for rank, r in enumerate(got["ranks"]):
        assert r["backend"] == "hccl" and r["device"] == f"npu:{rank}" and r["sum"] == [3.0, 3.0, 3.0]
        assert r["gathered"] == [[3.0] * 3, [6.0] * 3] and r["bcast"] == [0.0, 2.0, 4.0, 6.0]
        assert r["objs"] == [{"rank": 0}, {"rank": 1}]


def test_the_pipeline_on_npu1_gives_the_cpu_detections_and_p4_compiles(python, tmp_path):
    got = _run(python, f"""
        import json
        import blendstudy  # noqa: F401  (TORCH_DEVICE_BACKEND_AUTOLOAD=0)
        import torch, torch_npu
        from blendstudy import device as devmod
        from blendstudy.data import generate_synthetic_coco, read_image
        from blendstudy.data.coco import CocoDataset
        from blendstudy.ops import deform_conv as D
        from blendstudy.optimize import build_pipeline
        from blendstudy.loading import load_pipeline

        ds = generate_synthetic_coco({str(tmp_path)!r}, 1, seed=2024, split_name="check", show_progress=False)
        coco = CocoDataset(ds.ann_file, ds.image_dir)
        image = read_image(coco.image_path(coco.image_ids[0]), "BGR")
        cpu = load_pipeline("BlendMask/Tiny_synthetic", "tiny_synthetic", "cpu")
        dev = devmod.resolve_device("npu:1")
        npu = load_pipeline("BlendMask/Tiny_synthetic", "tiny_synthetic", "npu:1")
        devmod.reset_peak_memory(dev)
        with torch.no_grad():
            a = cpu.pipeline(image)
            b = npu.pipeline(image)
        out = {{"device": [str(dev), str(npu.device), str(next(npu.pipeline.model.parameters()).device),
                           torch.npu.current_device()],
               "n": [len(a), len(b)], "classes": torch.equal(a.classes, b.classes),
               "boxes": float((a.boxes - b.boxes).abs().max()) if len(a) else 0.0,
               "scores": float((a.scores - b.scores).abs().max()) if len(a) else 0.0,
               "masks": float((a.masks != b.masks).float().mean()) if len(a) else 0.0,
               "out_devices": sorted({{t.device.type for t in (b.boxes, b.scores, b.classes, b.masks)}}),
               "peak_mb": devmod.peak_memory_mb(dev), "name": devmod.device_name(dev), "cann": devmod.cann_version()}}
        # torch_npu's kernel against the project's plain op: the shape of D._npu_self_check with a valid offset
        gen = torch.Generator().manual_seed(0)
        x, w = torch.randn(1, 8, 9, 11, generator=gen), torch.randn(6, 8, 3, 3, generator=gen)
        off, m = torch.randn(1, 18, 5, 6, generator=gen) * 3, torch.rand(1, 9, 5, 6, generator=gen)
        bias = torch.randn(6, generator=gen)
        ref = D.deform_conv2d_plain(x, off, w, bias, stride=2, padding=2, dilation=2, mask=m)
        mine = D.deform_conv2d_npu(x.to(dev), off.to(dev), w.to(dev), bias.to(dev), stride=2, padding=2, dilation=2,
                                   mask=m.to(dev))
        out["dcn"] = [str(mine.device), float((mine.cpu() - ref).abs().max()), float(ref.abs().max())]
        p4 = build_pipeline(npu.pipeline, "p4", dev)
        with torch.no_grad():
            c = p4(image)
        out["p4"] = [p4.recipe_info["compile"].backend, len(c) > 0, c.boxes.device.type, c.scores.device.type]
        print(json.dumps(out))
        """, timeout=600)
    assert got["device"] == ["npu:1", "npu:1", "npu:1", 1]
    assert got["n"][0] == got["n"][1] > 0 and got["classes"] is True
    # the same CPU kernels; only the deformable convolution differs (torchvision's on cpu, the plain op on npu)
    assert got["boxes"] < 1e-3 and got["scores"] < 1e-5 and got["masks"] < 1e-3
    assert got["out_devices"] == ["cpu"]
    assert got["peak_mb"] > 0 and got["name"] == "Ascend910B3" and got["cann"] == "8.5.0"
    assert got["dcn"][0] == "npu:1" and got["dcn"][1] <= 1e-4 * max(1.0, got["dcn"][2])
    assert got["p4"] == ["npu", True, "cpu", "cpu"]
