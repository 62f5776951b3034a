"""Worker processes: where the study measures.

A Jupyter kernel is an interactive interpreter, and torch_npu turns its dispatch queue off in any
interactive interpreter (``TASK_QUEUE_ENABLE=0`` whenever ``hasattr(sys, "ps1")``); thread counts
(``OMP_NUM_THREADS``), core binding and allocator settings are read once, when a process starts.
So no latency is taken in the notebook's kernel: a :class:`Worker` is a fresh, non-interactive
``python -m blendstudy.measure.worker`` started with the runtime environment already in place
(variables set and cores bound before it imports torch), and the kernel calls library functions
in it (``worker.call(fn, *args)``: ``fn`` is a module-level ``blendstudy`` function; arguments and
results travel pickled over a pipe, errors come back as the same exception). Every result can say
which process made it (:func:`process_info`).
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from blendstudy import device

__all__ = ["Worker", "WorkerError", "WorkerSpec", "child_environment", "process_info", "start_environment"]

#: variables torch_npu (or the kernel) may have changed in this process that a worker must not inherit:
#: a worker takes them from the environment this process was STARTED with (start_environment)
_RESTORED = ("TASK_QUEUE_ENABLE",)


def start_environment() -> Dict[str, str]:
    """The environment this process was started with. On Linux /proc/self/environ, which changes made
    afterwards do not touch -- torch_npu's TASK_QUEUE_ENABLE=0 in an interactive interpreter included,
    whether torch_npu was imported before blendstudy or after; elsewhere the environment as it was
    when blendstudy was first imported (blendstudy.ENV_AT_IMPORT)."""
    try:
        with open("/proc/self/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        import blendstudy

        return dict(blendstudy.ENV_AT_IMPORT)
    out: Dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            out[os.fsdecode(key)] = os.fsdecode(value)
    return out


class WorkerError(RuntimeError):
    """A worker process failed: the message has the worker's error (or why it died) in one line,
    ``details`` the traceback or the end of its stderr."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass
class WorkerSpec:
    """How to start a worker: ``env`` set before it imports torch (TASK_QUEUE_ENABLE,
    OMP_NUM_THREADS, MALLOC_*, ASCEND_RT_VISIBLE_DEVICES ...), ``cpu_cores`` bound before it starts
    (None: the caller's), ``label`` a name for messages and records."""

    label: str = "worker"
    env: Dict[str, str] = field(default_factory=dict)
    cpu_cores: Optional[List[int]] = None

    def key(self) -> tuple:
        return (tuple(sorted(self.env.items())), tuple(self.cpu_cores or ()))


def child_environment(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment a measuring child process (a worker, a torchrun job) starts with: this
    process's, except the variables a kernel's torch_npu rewrites (``_RESTORED``), which are taken as
    this process was started (start_environment); then ``extra`` (the stage's runtime variables)."""
    env = dict(os.environ)
    started = start_environment()
    for k in _RESTORED:
        if k in started:
            env[k] = started[k]
        else:
            env.pop(k, None)
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _target_name(fn: Callable[..., Any]) -> str:
    module, name = getattr(fn, "__module__", ""), getattr(fn, "__qualname__", "")
    if not module.startswith("blendstudy") or "<" in name or "." in name:
        raise ValueError(f"a worker runs module-level blendstudy functions, not {module}.{name}")
    return f"{module}:{name}"


class Worker:
    """A live worker process. ``with Worker(spec) as w: w.call(fn, *args, **kwargs)``."""

    def __init__(self, spec: Optional[WorkerSpec] = None) -> None:
        self.spec = spec or WorkerSpec()
        env = child_environment(self.spec.env)
        cores = list(self.spec.cpu_cores) if self.spec.cpu_cores else None
        if cores and hasattr(os, "sched_getaffinity"):
            allowed = device.allowed_cores()  # a cpuset (container) may allow fewer than the machine has
            usable = sorted(set(cores) & set(allowed))
            if not usable:
                raise WorkerError(f"{self.spec.label}: none of the cores {device.format_cores(cores)} may be used "
                                  f"by this process (it may use {device.format_cores(allowed)} of the machine's "
                                  f"{os.cpu_count()})")
            cores = usable

        def bind() -> None:  # runs in the child before it execs python
            if cores:
                os.sched_setaffinity(0, cores)

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blendstudy.measure.worker", str(to_child_r), str(from_child_w)],
            env=env, pass_fds=(to_child_r, from_child_w), preexec_fn=bind if cores else None,
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr)
        os.close(to_child_r)
        os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)

    def _stderr_tail(self, lines: int = 8) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the worker and return its result; an exception raised
        there is raised here (WorkerError when it cannot travel, or the worker died)."""
        if self.proc.poll() is not None:
            raise WorkerError(f"{self.spec.label}: the worker has exited (status {self.proc.returncode})",
                              self._stderr_tail())
        try:
            self._send.send(("call", _target_name(fn), args, kwargs))
            status, payload, details = self._recv.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.proc.wait(timeout=30)
            tail = self._stderr_tail()
            last = tail.splitlines()[-1] if tail else type(exc).__name__
            raise WorkerError(f"{self.spec.label}: the worker died (status {self.proc.returncode}): {last}",
                              tail) from None
        if status == "ok":
            return payload
        if isinstance(payload, BaseException):
            raise payload
        raise WorkerError(f"{self.spec.label}: {payload}", details)

    def close(self) -> None:
        """Ask the worker to exit and wait for it (killed after 30 s)."""
        if self.proc.poll() is None:
            try:
                self._send.send(("quit", None, (), {}))
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for conn in (self._send, self._recv):
            conn.close()
        self._stderr.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # a worker never outlives its owner
        try:
            if self.proc.poll() is None:
                self.proc.kill()
        except Exception:
            pass


def process_info() -> Dict[str, Any]:
    """What THIS process reads back about its own runtime (blendstudy.device.effective_runtime):
    pid, interactive or not, torch threads, the cores it may run on, the runtime variables and, on
    an NPU, the task queue in force."""
    return device.effective_runtime()


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    if not module.startswith("blendstudy"):
        raise ValueError(f"not a blendstudy function: {target}")
    return getattr(importlib.import_module(module), name)


def _portable(exc: BaseException) -> Optional[BaseException]:
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return None


def serve(read_fd: int, write_fd: int) -> None:
    """The worker's loop: receive (call, target, args, kwargs), send (status, payload, details)."""
    recv = Connection(read_fd, writable=False)
    send = Connection(write_fd, readable=False)
    while True:
        try:
            kind, target, args, kwargs = recv.recv()
        except EOFError:
            break
        if kind == "quit":
            break
        try:
            result = _resolve(target)(*args, **kwargs)
            send.send(("ok", result, ""))
        except BaseException as exc:  # noqa: B902 -- everything goes back to the caller
            details = traceback.format_exc()
            portable = _portable(exc)
            if portable is not None:
                send.send(("error", portable, details))
            else:
                send.send(("error", f"{type(exc).__name__}: {exc}", details))
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                break


def main(argv: Sequence[str]) -> int:
    serve(int(argv[0]), int(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
