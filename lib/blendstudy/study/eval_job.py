"""One `eval` command and where each of its ranks runs: :class:`EvalJob` (the command's arguments,
both ways), :class:`RankEnv` (torchrun's RANK, WORLD_SIZE, LOCAL_RANK ... or one rank of one), the
device (:func:`rank_device`), the cores (:func:`rank_cores`) and the process group's backend
(:func:`backend_for`) of a rank, and the names of the files rank 0 writes. The ranks' driver is
blendstudy.study.eval_rank; the study's launcher, blendstudy.study.evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from blendstudy import device as devices
from blendstudy.errors import UserError

__all__ = ["DEFAULT_TIMEOUT_MIN", "EvalJob", "INCOMPLETE_FILE", "LOG_FILE", "RESULT_FILE", "RankEnv", "SUMMARY_FILE",
           "TEST_CRASH_STATUS", "TEST_STOP_ENV", "backend_for", "rank_cores", "rank_device"]

#: TEST-ONLY knob: "<rank>:<k>[:crash]" makes that rank stop predicting after k images of its
#: share -- then either go on as if done (rank 0's merge must name the ids it left; "stop", the
#: default) or die at once with status TEST_CRASH_STATUS ("crash": a killed rank). Never set it
#: for a real run.
TEST_STOP_ENV = "BLENDSTUDY_EVAL_TEST_STOP"


TEST_CRASH_STATUS = 75


#: how long a rank waits for the others at a collective (the slowest rank's share, at most)
DEFAULT_TIMEOUT_MIN = 180.0


#: files rank 0 writes at the top of the out dir once the shards merge
RESULT_FILE, SUMMARY_FILE, INCOMPLETE_FILE, LOG_FILE = "eval_result.json", "summary.json", "incomplete.json", \
    "launch.log"


@dataclass
class EvalJob:
    """One `eval` command: what to predict with, on what, into which folder, and how.

    score_thresh: the model's threshold (MODEL.FCOS.INFERENCE_TH_TEST; None = the config's);
    eval_score_thresh: detections kept for the COCO results (None = the model's threshold);
    devices: one device per local rank (None: the kind of ``device`` with index LOCAL_RANK);
    cpu_affinity: core ranges per local rank ("0-23;24-47", or "0-23,24-47" when each is one
    range), or per device ("npu:1=144-167;npu:2=96-119"), or one range for all;
    runtime: a runtime_best.json whose in-process part (threads, cuda flags) the recipe's
    "runtime" switch applies; evaluate: False = predict and time only (random weights)."""

    config: str
    annotations: str
    image_dir: str
    out_dir: str
    weights: Optional[str] = None
    random_init: str = "adelaidet"
    device: str = "auto"
    devices: Optional[List[str]] = None
    recipe: str = "baseline"
    score_thresh: Optional[float] = None
    eval_score_thresh: Optional[float] = None
    max_images: Optional[int] = None
    max_dets: int = 100
    evaluate: bool = True
    on_mismatch: str = "error"
    cpu_affinity: Optional[str] = None
    runtime: Optional[str] = None
    progress: bool = True
    timeout_min: float = DEFAULT_TIMEOUT_MIN

    @classmethod
    def from_args(cls, args: Any) -> EvalJob:
        """From the `eval` command's parsed arguments (attribute names as the fields)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        if isinstance(values.get("devices"), str):
            values["devices"] = [d.strip() for d in values["devices"].split(",") if d.strip()] or None
        return cls(**values)

    def argv(self) -> List[str]:
        """The `eval` command's arguments for this job (from_args of their parse gives it back)."""
        out = ["--config", self.config, "--annotations", self.annotations, "--image-dir", self.image_dir,
               "--out-dir", self.out_dir, "--device", self.device, "--recipe", self.recipe,
               "--random-init", self.random_init,
               "--max-dets", str(self.max_dets), "--on-mismatch", self.on_mismatch,
               "--timeout-min", str(self.timeout_min)]
        optional = (("--weights", self.weights), ("--score-thresh", self.score_thresh),
                    ("--eval-score-thresh", self.eval_score_thresh), ("--max-images", self.max_images),
                    ("--cpu-affinity", self.cpu_affinity), ("--runtime", self.runtime),
                    ("--devices", ",".join(self.devices) if self.devices else None))
        for flag, value in optional:
            if value is not None:
                out += [flag, str(value)]
        if not self.evaluate:
            out.append("--no-evaluate")
        if not self.progress:
            out.append("--no-progress")
        return out


# ---------------------------------------------------------------------------- where a rank runs
@dataclass(frozen=True)
class RankEnv:
    """Where this process stands in the job, from torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK = the node); one rank of one when not launched."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node: int = 0
    launched: bool = False

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> RankEnv:
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        world = int(env["WORLD_SIZE"])
        return cls(rank=int(env["RANK"]), world_size=world, local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
                   local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)), node=int(env.get("GROUP_RANK", 0)),
                   launched=True)


def rank_device(spec: str, local_rank: int = 0, devices_list: Optional[Sequence[str]] = None,
                launched: bool = False, auto_kind: Optional[str] = None) -> str:
    """The device a rank runs on: ``devices_list[local_rank]`` when given; else ``spec`` with the
    local rank as index when it names a kind only ("npu", "cuda"; "auto" = the kind
    resolve_device would pick, ``auto_kind`` to say it) and the process was launched by
    torchrun; an explicit index ("npu:3") or "cpu" as it is."""
    if devices_list:
        if local_rank >= len(devices_list):
            raise UserError(f"--devices names {len(devices_list)} device(s) ({','.join(devices_list)}), "
                            f"none for local rank {local_rank}: give one per process of the node")
        return str(devices_list[local_rank]).strip().lower()
    spec = (spec or "auto").strip().lower()
    if not launched or ":" in spec or spec == "cpu":
        return spec
    kind = spec
    if kind == "auto":
        kind = auto_kind or ("npu" if devices.npu_available() else "cuda" if devices.cuda_available() else "cpu")
    return kind if kind == "cpu" else f"{kind}:{local_rank}"


def rank_cores(spec: Optional[str], local_rank: int = 0, device: str = "") -> Optional[List[int]]:
    """The cores a rank binds to, from ``--cpu-affinity``: None/"" = no binding; one range for
    every rank ("0-23"); one per local rank, ';'-separated ("0-23;24-47", each may hold commas)
    or ','-separated when each is a single range ("0-23,24-47"); or per device, as the params'
    runtime.cpu_affinity mapping ("npu:1=144-167;npu:2=96-119;default=0-23": the device, then
    its kind, then "default"). An empty entry means no binding for that rank."""
    if not spec or not str(spec).strip():
        return None
    text = "".join(str(spec).split())
    parts = text.split(";") if ";" in text else text.split(",")
    try:
        if any("=" in p for p in parts):
            table: Dict[str, str] = {}
            key = None
            for p in parts:
                if "=" in p:
                    key, _, value = p.partition("=")
                    table[key] = value
                elif key is not None and p:
                    table[key] += "," + p
            dev = str(device).lower()
            value = table.get(dev, table.get(dev.split(":")[0], table.get("default", "")))
        elif len(parts) == 1:
            value = parts[0]
        elif local_rank < len(parts):
            value = parts[local_rank]
        else:
            raise UserError(f"--cpu-affinity {spec!r} gives {len(parts)} core ranges, none for local rank "
                            f"{local_rank}")
        return devices.parse_cores(value) or None
    except ValueError as exc:
        raise UserError(f"--cpu-affinity: {exc}") from None


def backend_for(device: torch.device) -> str:
    """The process group's backend for a device: hccl (Ascend), nccl (CUDA), gloo (cpu)."""
    return {"npu": "hccl", "cuda": "nccl"}.get(torch.device(device).type, "gloo")
