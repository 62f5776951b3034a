"""P5 sharded over ranks (blendstudy.coco.sharded, blendstudy.study.evaluation, `eval` under torchrun).

Pure parts first (sharding, shard files, merge and its exactly-once check, the rank's device and
cores, the command lines), then real jobs on the CPU: torchrun with 2 gloo ranks against one
process on the same images, a rank killed mid-run and the job resumed with another number of
ranks, a rank that stops early (the merge names what it left) and an unreadable image (skipped,
listed, not evaluated). The shipped tiny model at a small input size, 6 small synthetic images;
every process uses one thread, so one rank and two give the same bits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blendstudy.cli import build_parser, main
from blendstudy.coco import sharded
from blendstudy.coco.sharded import (
    IncompleteEvaluationError,
    merge_shards,
    pending_ids,
    read_shard,
    read_shards,
    shard_paths,
    shard_prefix,
    shard_share,
    throughput,
)
from blendstudy.coco.store import append_jsonl
from blendstudy.jsonable import from_jsonable
from blendstudy.paths import repo_root
from blendstudy.results import EvalResult
from blendstudy.structures import Detections
from blendstudy.study import evaluation
from blendstudy.study.evaluation import EvalJob, RankEnv, rank_cores, rank_device, torchrun_command
from blendstudy.study.params import StudyParams

N_IMAGES = 6
SMALL_CONFIG = """_BASE_: {base}
INPUT:
  MIN_SIZE_TEST: 128
  MAX_SIZE_TEST: 160
"""
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", evaluation.TEST_STOP_ENV)


# ---------------------------------------------------------------------------- pure functions
def test_shares_are_disjoint_cover_and_balanced():
    ids = [9, 3, 7, 1, 5, 2, 8]
    parts = [shard_share(ids, r, 3) for r in range(3)]
    assert parts == [[1, 5, 9], [2, 7], [3, 8]]
    assert sorted(i for p in parts for i in p) == sorted(ids)
    assert shard_share(ids, 0, 1) == sorted(ids)
    assert shard_prefix(1, 2) == "w2_r1_"
    with pytest.raises(ValueError):
        shard_share(ids, 3, 3)


def _write_shard(folder: Path, rank: int, world: int, done=(), skipped=(), timing_only=()):
    p = shard_paths(folder, rank, world)
    Path(p.out_dir).mkdir(parents=True, exist_ok=True)
    with open(p.predictions_jsonl, "a") as pf, open(p.timing_jsonl, "a") as tf, open(p.skipped_jsonl, "a") as sf:
        for k, i in enumerate(list(done) + list(timing_only)):
            append_jsonl(tf, {"image_id": i, "file": f"{i}.png", "ms": 10.0 + i, "num_detections": 1,
                              "first_in_session": k == 0})
            if i in done:
                append_jsonl(pf, {"image_id": i, "results": [{"image_id": i, "score": 0.5}]})
        for i in skipped:
            append_jsonl(sf, {"image_id": i, "file": f"{i}.png", "reason": "unreadable"})
    return p


def test_every_shard_counts_and_the_merge_checks_exactly_once(tmp_path):
    _write_shard(tmp_path, 0, 2, done=[1, 3], timing_only=[5])  # 5: killed between timing and prediction
    _write_shard(tmp_path, 1, 2, done=[2], skipped=[4])
    _write_shard(tmp_path, 0, 1, done=[6, 99])                   # a later one-rank session; 99 not in the run
    shards = read_shards(tmp_path)
    assert [s.prefix for s in shards] == ["w1_r0_", "w2_r0_", "w2_r1_"]
    assert pending_ids(range(1, 8), shards) == [5, 7]
    merged = merge_shards(range(1, 8), shards)
    assert merged.predicted == [1, 2, 3, 6] and merged.missing == [5, 7] and merged.stray == [99]
    assert [t["image_id"] for t in merged.timing] == [1, 2, 3, 6]  # 5's orphan timing line is not counted
    assert [s["image_id"] for s in merged.skipped] == [4]
    assert merged.first_call_ms() == [11.0, 12.0, 16.0] and merged.steady_ms() == [13.0]
    with pytest.raises(IncompleteEvaluationError) as err:
        merged.check()
    assert "2 of 7 image(s) were never predicted (ids 5, 7)" in str(err.value)
    assert err.value.missing == [5, 7]

    _write_shard(tmp_path, 1, 2, done=[5, 7, 3])  # 3 a second time
    merged = merge_shards(range(1, 8), read_shards(tmp_path))
    assert merged.missing == [] and merged.duplicated == {3: ["w2_r0", "w2_r1"]}
    with pytest.raises(IncompleteEvaluationError, match=r"3 in w2_r0, w2_r1"):
        merged.check()


def test_a_truncated_last_line_is_dropped_and_a_long_list_is_cut(tmp_path):
    p = _write_shard(tmp_path, 0, 1, done=[1, 2])
    with open(p.predictions_jsonl, "a") as fh:
        fh.write('{"image_id": 3, "resu')
    with pytest.warns(UserWarning, match="truncated"):
        shard = read_shard(Path(p.out_dir), "w1_r0_")
    assert shard.done == [1, 2]
    merged = merge_shards(range(1, 40), [shard])
    with pytest.raises(IncompleteEvaluationError, match=r"ids 3, 4, .*, 22, \.\.\. \(37 in all\)"):
        merged.check()


def test_an_earlier_single_process_folder_is_adopted(tmp_path):
    (tmp_path / "predictions.jsonl").write_text('{"image_id": 1, "results": []}\n')
    (tmp_path / "per_image_timing.jsonl").write_text('{"image_id": 1, "ms": 5.0, "first_in_session": true}\n')
    assert sharded.adopt_single_process_store(tmp_path) == "legacy_"
    assert not (tmp_path / "predictions.jsonl").exists() and not (tmp_path / "per_image_timing.jsonl").exists()
    assert [s.done for s in read_shards(tmp_path)] == [[1]]
    assert sharded.adopt_single_process_store(tmp_path) is None


def test_predict_images_writes_skips_and_stops(tmp_path):
    def read(path):
        if path.endswith("3.png"):
            raise ValueError("cannot identify image file")
        return torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()

    def predict(image):
        return Detections(boxes=torch.tensor([[1.0, 1.0, 4.0, 5.0]]), scores=torch.tensor([0.9]),
                          classes=torch.tensor([0]), image_size=(8, 8))

    paths = shard_paths(tmp_path, 0, 1)
    with pytest.warns(UserWarning, match="skipping image 3"):
        s = sharded.predict_images([1, 2, 3, 4, 5], lambda i: f"{i}.png", predict, {0: 7}, paths, 0.5,
                                  read=read, record={"rank": 0}, limit=3)
    assert (s.processed, [k.image_id for k in s.skipped], s.stopped) == (3, [3], True)
    shard = read_shard(Path(paths.out_dir), "w1_r0_")
    assert shard.done == [1, 2, 3, 4] and shard.predictions[4][0]["category_id"] == 7
    assert shard.timing[1]["first_in_session"] and shard.timing[1]["rank"] == 0
    row = sharded.rank_summary(s, rank=0)
    assert row["images"] == 3 and row["skipped"] == 1 and row["stopped early"] and row["images_per_s"] > 0
    t = throughput([{"images": 3, "loop_s": 1.5}, {"images": 2, "loop_s": 2.0}])
    assert t["images"] == 5 and t["images_per_s"] == 2.5


def test_where_a_rank_runs():
    env = RankEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                "GROUP_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.node, env.launched) == (3, 4, 1, 1, True)
    assert RankEnv.from_environ({}) == RankEnv()
    assert rank_device("npu", 1, launched=True) == "npu:1"
    assert rank_device("auto", 2, launched=True, auto_kind="cuda") == "cuda:2"
    assert rank_device("auto", 0) == "auto" and rank_device("npu:3", 1, launched=True) == "npu:3"
    assert rank_device("cpu", 1, launched=True) == "cpu"
    assert rank_device("auto", 1, ["npu:4", "npu:6"]) == "npu:6"
    with pytest.raises(evaluation.UserError, match="none for local rank 2"):
        rank_device("auto", 2, ["npu:4", "npu:6"])
    assert rank_cores(None) is None and rank_cores("0-1") == [0, 1]
    assert rank_cores("0-1,4-5", 1) == [4, 5] and rank_cores("0-1;4-5,8", 1) == [4, 5, 8]
    assert rank_cores("0-1;;4", 1) is None
    mapping = "npu:1=144-147,150;npu:2=96-97;default=0"
    assert rank_cores(mapping, 0, "npu:1") == [144, 145, 146, 147, 150]
    assert rank_cores(mapping, 0, "npu:5") == [0]
    assert rank_cores("npu:1=1-2,7,npu:2=3", 0, "npu:1") == [1, 2, 7]
    with pytest.raises(evaluation.UserError, match="cpu-affinity"):
        rank_cores("3-1")
    assert evaluation.backend_for(torch.device("cpu")) == "gloo"
    assert evaluation.backend_for(torch.device("cuda", 0)) == "nccl"


def test_the_job_travels_as_a_command_line(tmp_path):
    job = EvalJob(config="c.yaml", annotations="a.json", image_dir="img", out_dir=str(tmp_path), weights="w.pth",
                  devices=["npu:0", "npu:1"], recipe="p4", eval_score_thresh=0.3, max_images=5, evaluate=False,
                  on_mismatch="restart", cpu_affinity="0-3;4-7", runtime="rt.json", progress=False)
    args = build_parser().parse_args(["eval", *job.argv()])
    assert EvalJob.from_args(args) == job
    cmd = torchrun_command(job, 2)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    assert cmd[6:9] == ["-m", "blendstudy", "eval"]
    multi = torchrun_command(job, 8, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400")
    assert multi[5:13] == ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "10.0.0.1:29400",
                           "--node-rank", "1"]


def test_the_params_name_processes_devices_and_cores(tmp_path):
    base = repo_root() / "params"
    npu = StudyParams.load(base / "npu_910b3.yaml")
    n, devs = evaluation.study_processes(npu)
    assert n == 8 and devs == [f"npu:{i}" for i in range(8)]
    assert evaluation._affinity(npu, devs, None).split(";")[1:3] == ["144-167", "96-119"]
    assert evaluation.scaling_counts(npu) == []
    ci = StudyParams.load(base / "ci.yaml")
    assert evaluation.study_processes(ci) == (1, None)
    cpu = StudyParams.load(base / "ci.yaml", {"device": "cpu", "evaluation": {"scaling": True, "processes": 2}})
    assert evaluation.scaling_counts(cpu) == [1, 2]
    bad = StudyParams.load(base / "ci.yaml", {"evaluation": {"processes": 3, "devices": ["cpu"]}})
    with pytest.raises(evaluation.ParamsError, match="evaluation.devices"):
        evaluation.study_processes(bad)


# ---------------------------------------------------------------------------- real jobs
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from blendstudy.data.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("sharded")
    ds = generate_synthetic_coco(root / "data", N_IMAGES, seed=1, image_size=(96, 128), show_progress=False)
    config = root / "small.yaml"
    config.write_text(SMALL_CONFIG.format(base=repo_root() / "lib/blendstudy/configs/BlendMask/Tiny_synthetic.yaml"))
    return {"root": root, "ann": str(ds.ann_file), "images": str(ds.image_dir), "config": str(config)}


def _args(data, out, *extra):
    return ["--config", data["config"], "--weights", "tiny_synthetic", "--device", "cpu", "--annotations",
            data["ann"], "--image-dir", data["images"], "--out-dir", str(out), "--no-progress", *extra]


@pytest.fixture
def one_thread(monkeypatch):
    for k in DIST_ENV:
        monkeypatch.delenv(k, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank (OMP_NUM_THREADS=1): the same bits
    yield monkeypatch
    torch.set_num_threads(threads)


def _in_process(data, out, *extra):
    return main(["eval", *_args(data, out, *extra)])


def _torchrun(data, out, nproc, stop=None, *extra):
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if stop:
        env[evaluation.TEST_STOP_ENV] = stop
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "blendstudy", "eval", *_args(data, out, *extra)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _canonical(out):
    return sorted(json.dumps(p, sort_keys=True) for p in json.loads((Path(out) / "coco_predictions.json").read_text()))


def _lines(out):
    """image id -> how many predictions lines of all shards hold it"""
    counts = {}
    for s in read_shards(out):
        for i, n in s.counts.items():
            counts[i] = counts.get(i, 0) + n
    return counts


@pytest.fixture(scope="module")
def one_rank(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_rank")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _in_process(data, out) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_two_ranks_give_the_predictions_and_ap_of_one(data, one_rank, tmp_path):
    out = tmp_path / "two"
    run = _torchrun(data, out, 2)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "2 process(es): 6 image(s) predicted now" in run.stdout
    assert _canonical(out) == _canonical(one_rank)
    one, two = (json.loads((p / "summary.json").read_text()) for p in (one_rank, out))
    for kind in ("bbox", "segm"):
        assert two["metrics"][kind]["AP"] == one["metrics"][kind]["AP"]
    assert two["world_size"] == 2 and [r["rank"] for r in two["ranks"]] == [0, 1]
    assert [r["images"] for r in two["ranks"]] == [3, 3] and two["throughput"]["images_per_s"] > 0
    assert two["protocol"]["max_dets"] == 100 and two["protocol"]["images_evaluated"] == N_IMAGES
    assert sorted(p.name for p in (out / "shards").glob("*predictions.jsonl")) == [
        "w2_r0_predictions.jsonl", "w2_r1_predictions.jsonl"]
    assert len((out / "per_image_timing.jsonl").read_text().splitlines()) == N_IMAGES
    result = from_jsonable(EvalResult, json.loads((out / "eval_result.json").read_text()))
    assert result.num_processes == 2 and len(result.ranks) == 2 and result.ranks[1]["process"]["pid"]
    assert result.metrics["bbox"].AP == one["metrics"]["bbox"]["AP"]
    assert [r["device"] for r in evaluation.rank_rows(result)] == ["cpu", "cpu"]
    assert "by **2 process(es)**" in evaluation.describe(result)


def test_a_killed_rank_is_resumed_by_a_job_with_another_number_of_ranks(data, one_rank, tmp_path, one_thread):
    out = tmp_path / "killed"
    run = _torchrun(data, out, 2, stop="1:1:crash")
    assert run.returncode != 0 and not (out / "summary.json").exists()
    before = _lines(out)
    assert before.get(2) == 1 and len(before) < N_IMAGES  # rank 1 wrote its first image, then died
    assert _in_process(data, out) == 0  # one rank now: only what is missing
    after = _lines(out)
    assert sorted(after) == list(range(1, N_IMAGES + 1)) and set(after.values()) == {1}
    assert {i for s in read_shards(out) if s.prefix == "w1_r0_" for i in s.done} == set(after) - set(before)
    assert _canonical(out) == _canonical(one_rank)


def test_missing_images_are_named_not_evaluated_and_unreadable_ones_listed(data, one_rank, tmp_path, one_thread):
    bad_dir = tmp_path / "images"
    bad_dir.mkdir()
    for p in Path(data["images"]).iterdir():
        (bad_dir / p.name).write_bytes(p.read_bytes())
    (bad_dir / "000004.png").write_bytes(b"not a png")
    bad = {**data, "images": str(bad_dir)}
    out = tmp_path / "partial"

    one_thread.setenv(evaluation.TEST_STOP_ENV, "0:2")  # one rank stops after 2 images, as if done
    assert _in_process(bad, out) == 2
    assert not (out / "coco_predictions.json").exists() and not (out / "summary.json").exists()
    incomplete = json.loads((out / "incomplete.json").read_text())
    assert incomplete["missing"] == [3, 4, 5, 6]
    one_thread.delenv(evaluation.TEST_STOP_ENV)

    run = _torchrun(bad, out, 2)  # two ranks finish it; image 4 cannot be read
    assert run.returncode != 0 and "1 image(s) skipped" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["images_skipped"] == [4] and summary["protocol"]["images_evaluated"] == 5
    assert summary["metrics"]["bbox"]["num_images"] == 5 and [s["image_id"] for s in summary["skipped"]] == [4]
    assert json.loads((out / "skipped.jsonl").read_text())["reason"]
    assert set(_lines(out).values()) == {1} and len(_lines(out)) == N_IMAGES
    expected = [p for p in _canonical(one_rank) if json.loads(p)["image_id"] != 4]
    assert _canonical(out) == expected


def test_the_message_names_the_missing_images(data, tmp_path, one_thread, capsys):
    one_thread.setenv(evaluation.TEST_STOP_ENV, "0:1")
    assert _in_process(data, tmp_path / "stop", "--max-images", "3") == 2
    err = capsys.readouterr().err
    assert err.startswith("blendstudy: 2 of 3 image(s) were never predicted (ids 2, 3)")
    assert "nothing was evaluated" in err


def test_another_pipeline_restarts_the_folder_when_asked(data, one_rank, tmp_path, one_thread):
    out = tmp_path / "restart"
    shutil.copytree(one_rank, out)
    with pytest.warns(UserWarning, match="discarded"):
        assert _in_process(data, out, "--recipe", "p0", "--on-mismatch", "restart", "--max-images", "2") == 0
    assert [s.prefix for s in read_shards(out)] == ["w1_r0_"] and sorted(_lines(out)) == [1, 2]
    result = from_jsonable(EvalResult, json.loads((out / "eval_result.json").read_text()))
    assert result.discarded["run_info"]["recipe"] == "baseline" and result.recipe == "p0"
    assert json.loads((out / "run_config.json").read_text())["run_info"]["recipe"] == "p0"
