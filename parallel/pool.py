"""Persistent worker processes, one per device, joined in one torch.distributed group (NCCL on GPUs, gloo on CPUs).

The process that runs the graph (ComfyUI's, or the headless runner's) is not a rank: it starts the workers on first
use, keeps them across prompts, and sends each of them commands over a local connection: load a model handle
(each worker reads the same files, memory-mapped, into its own device), run a model call on some of the ranks (with
its sampling-session ticket), move a model to host memory, report its device's memory, profile a call, stop. A
worker answers every command, so the caller knows when a call is done and what failed where. A worker that dies or
fails takes the whole pool down (the others may be waiting in a collective): the call raises an error naming the
device, and the next use starts a fresh pool.

More hosts: the same design holds with `init_method` pointing at a rendezvous every host reaches and one connection
per remote worker (multiprocessing.connection over TCP with the same authkey); nothing here assumes one host but the
127.0.0.1 addresses.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import queue
import runpy
import secrets
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

import torch

from .. import runtime

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0   # a worker's import of torch and the process-group rendezvous
POLL_S = 0.2
MULTI_GPU_PATCH = "multi_gpu"   # the handle patch of OpenReel Multi-GPU (parallel/model.py)


class WorkerError(RuntimeError):
    """A worker failed or died; the message names its device."""


def send(conn: Connection, value: Any) -> None:
    """Plain pickling: tensors travel as bytes (multiprocessing's own pickler would pass torch storages as file
    descriptors, which only its own child processes may open)."""
    conn.send_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pool:
    """Workers on `devices` (e.g. ("cuda:0", "cuda:1"), or ("cpu", "cpu") for tests), ranks in that order."""

    def __init__(self, devices: tuple[str, ...]):
        self.devices = devices
        self.backend = "nccl" if all(d.startswith("cuda") for d in devices) else "gloo"
        self._groups: set[tuple[int, ...]] = set()
        authkey = secrets.token_bytes(16)
        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        port = _free_port()
        package = __name__.rsplit(".", 2)[0]
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "NCCL_NVLS_ENABLE": "0"}   # NVLink multicast can take a shared host's GPUs out of service
        self.procs = [subprocess.Popen([sys.executable, str(Path(__file__).with_name("worker.py")), package, str(root),
                                        f"{listener.address[1]}", authkey.hex(), str(rank), str(len(devices)),
                                        device, self.backend, str(port)], env=env)
                      for rank, device in enumerate(devices)]
        self.conns: list[Connection | None] = [None] * len(devices)
        accepted: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [accepted.put(listener.accept()) for _ in devices], daemon=True).start()
        try:
            waited = 0.0
            while any(c is None for c in self.conns):
                try:
                    conn = accepted.get(timeout=POLL_S)
                    self.conns[receive(conn)] = conn
                except queue.Empty:
                    waited += POLL_S
                    dead = [self.devices[r] for r, p in enumerate(self.procs) if p.poll() is not None]
                    if dead or waited > START_TIMEOUT_S:
                        raise WorkerError(f"the worker on {', '.join(dead)} stopped while starting" if dead else
                                          f"the workers did not start in {START_TIMEOUT_S:.0f} s")
            for rank in range(len(devices)):
                self._reply(rank, START_TIMEOUT_S)  # the process group is up
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()

    # ------------------------------------------------------------------------------ commands
    def _reply(self, rank: int, timeout: float | None = None) -> Any:
        """Rank `rank`'s answer to its last command; a death or failure closes the pool and names the device."""
        conn, waited = self.conns[rank], 0.0
        try:
            while conn is None or not conn.poll(POLL_S):
                if self.procs[rank].poll() is not None:
                    raise self._lost(rank)
                waited += POLL_S
                if timeout is not None and waited > timeout:
                    self.close()
                    raise WorkerError(f"the worker on {self.devices[rank]} did not answer in {timeout:.0f} s")
            status, value = receive(conn)
        except (EOFError, OSError):
            raise self._lost(rank) from None
        if status == "error":
            self.close()
            raise WorkerError(f"the worker on {self.devices[rank]} failed: {value}")
        return value

    def run(self, commands: dict[int, tuple]) -> dict[int, Any]:
        """Send each rank its command (all before any answer is awaited, so they run together); their answers."""
        if not self.alive():
            raise WorkerError("the workers were stopped")
        for rank, command in commands.items():
            try:
                send(self.conns[rank], command)
            except OSError:
                raise self._lost(rank) from None
        return {rank: self._reply(rank) for rank in commands}

    def _lost(self, rank: int) -> WorkerError:
        """The error for a worker that is gone; the pool is closed."""
        proc = self.procs[rank]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.close()
        return WorkerError(f"the worker on {self.devices[rank]} stopped (exit code {proc.returncode})")

    def group(self, ranks: tuple[int, ...]) -> None:
        """Make the process group of `ranks` (every rank takes part in making any group)."""
        if len(ranks) > 1 and ranks not in self._groups:
            self.run({rank: ("group", ranks) for rank in range(len(self.devices))})
            self._groups.add(ranks)

    def memory(self) -> list[tuple[int, int]]:
        """Each worker's device memory in bytes, by rank: (allocated now, peak since the last report); zeros off
        CUDA."""
        answers = self.run({rank: ("memory",) for rank in range(len(self.devices))})
        return [answers[rank] for rank in range(len(self.devices))]

    def profile_next_call(self) -> None:
        """Every worker runs its next model call under torch's profiler (for benches: the collectives' share)."""
        self.run({rank: ("profile",) for rank in range(len(self.devices))})

    def profiled(self) -> list[dict[str, float]]:
        """What each worker's profiled call spent, by rank: milliseconds in collectives (NCCL kernels on GPUs, gloo
        operations on CPUs; waiting for the other ranks included) and in all device work (all host work on CPUs)."""
        answers = self.run({rank: ("profiled",) for rank in range(len(self.devices))})
        return [answers[rank] for rank in range(len(self.devices))]

    def alive(self) -> bool:
        return all(c is not None for c in self.conns) and all(p.poll() is None for p in self.procs)

    def close(self) -> None:
        """Stop every worker: asked first, killed if it does not stop."""
        for conn in self.conns:
            try:
                if conn is not None:
                    send(conn, ("stop",))
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self.conns:
            if conn is not None:
                conn.close()
        self.conns = [None] * len(self.devices)
        if _POOLS.get(self.devices) is self:
            del _POOLS[self.devices]


_POOLS: dict[tuple[str, ...], Pool] = {}


def pool_for(devices: tuple[str, ...]) -> Pool:
    """The running pool of these devices, started if there is none (or the last one stopped)."""
    pool = _POOLS.get(devices)
    if pool is None or not pool.alive():
        log.info("OpenReel: starting %d worker processes on %s", len(devices), ", ".join(devices))
        pool = _POOLS[devices] = Pool(devices)
        runtime.hold_outside(f"OpenReel workers on {', '.join(devices)}", pool.close)
    return pool


def shutdown() -> None:
    """Stop every pool (at exit)."""
    for pool in list(_POOLS.values()):
        pool.close()


atexit.register(shutdown)


# ---------------------------------------------------------------------------------- the worker's side
def local_handle(handle):
    """The handle as a worker runs it: without the multi-GPU patch (the worker is one of the GPUs)."""
    return replace(handle, patches=tuple((n, v) for n, v in handle.patches if n != MULTI_GPU_PATCH))


def serve(conn: Connection, rank: int, world: int, device: str, backend: str, port: int) -> None:
    """A worker's loop: join the group, then answer commands until told to stop."""
    import torch.distributed as dist

    from ..memory import patches
    from ..model_loaders import dit  # noqa: F401  (registers how a DiT handle's files are read)
    from ..model_loaders.core import prepare
    from ..models.common import calls
    from .sequence import SequenceParallel

    if os.environ.get("OPENREEL_WORKER_SETUP"):  # a file a bench or test runs first (e.g. random-weight builders)
        runpy.run_path(os.environ["OPENREEL_WORKER_SETUP"], run_name="openreel_worker_setup")
    runtime.set_device(device)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    groups: dict[tuple[int, ...], Any] = {}
    runs = calls.Runs()   # the sampling session's runs, as the calls' tickets name them
    profiler, profiled = False, None
    send(conn, ("ok", None))
    while True:
        command = receive(conn)
        if command[0] == "stop":
            break
        try:
            if command[0] == "group":
                groups[command[1]] = dist.new_group(list(command[1]))
                send(conn, ("ok", None))
                continue
            if command[0] == "memory":
                cuda = device.startswith("cuda")
                send(conn, ("ok", (torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()) if cuda
                          else (0, 0)))
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                continue
            if command[0] in ("profile", "profiled"):
                profiler = command[0] == "profile"
                send(conn, ("ok", profiled if command[0] == "profiled" else None))
                continue
            handle = local_handle(command[1])
            module = prepare(handle)
            if command[0] == "load":
                patches.load(module, 0)
                for part in (module, getattr(getattr(module, "residency", None), "view", None)):
                    if part is not None:  # no host copy kept for fast offloads: one per worker would add up
                        runtime.forget_host_copies(part)
                send(conn, ("ok", None))
            elif command[0] == "offload":
                patches.offload(module)
                send(conn, ("ok", None))
            elif command[0] == "call":
                ranks, args, kwargs, ticket = command[2:6]
                sharing = SequenceParallel(groups[ranks]) if len(ranks) > 1 else None
                module.wrappers.set("sequence_parallel", sharing)
                dev = runtime.torch_device()
                within = calls.calling(runs.call(ticket)) if ticket is not None else contextlib.nullcontext()
                with torch.no_grad(), within, (_Profile(dev) if profiler else contextlib.nullcontext()) as found:
                    out = module(*_to(args, dev), **_to(kwargs, dev))
                if profiler:
                    profiler, profiled = False, found.times()
                send(conn, ("ok", (out.cpu(), runs.texts()) if rank == ranks[0] else None))
        except BaseException as exc:  # answered, then this worker stops: the pool is closed by the caller
            send(conn, ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))
            break
    dist.destroy_process_group()


class _Profile:
    """One model call under torch's profiler: the time of its collectives against all its work. On GPUs both are
    kernel time (NCCL's kernels; every kernel); on CPUs gloo's operations against the call's wall time."""

    def __init__(self, device: torch.device):
        from torch.profiler import ProfilerActivity, profile
        self.cuda = device.type == "cuda"
        self.profile = profile(activities=[ProfilerActivity.CUDA if self.cuda else ProfilerActivity.CPU])

    def __enter__(self) -> "_Profile":
        self.profile.__enter__()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.wall = time.perf_counter() - self.start
        self.profile.__exit__(*exc)

    def times(self) -> dict[str, float]:
        events = self.profile.key_averages()
        if self.cuda:   # microseconds
            collective = sum(e.self_device_time_total for e in events if "nccl" in e.key.lower())
            total = sum(e.self_device_time_total for e in events)
        else:
            collective = sum(e.cpu_time_total for e in events if e.key.startswith("gloo:"))
            total = self.wall * 1e6
        return {"collective_ms": collective / 1e3, "total_ms": total / 1e3, "wall_ms": self.wall * 1e3}


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value
