"""A local Ray cluster that goes when the command that started it goes, even by SIGKILL.

``ray.init()`` in the command's own process starts the cluster's processes as its children with
"fate sharing", but the agents the raylet starts (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``)
outlive a SIGKILL of the command: they are re-parented to init and stay. So a command that needs a
local cluster runs it in this guard process instead (``python -m torchfpe.lab.sweep.ray_guard``, in a
session of its own so that a terminal's Ctrl-C reaches only the command). The guard:

1. becomes a *child subreaper* (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``): every process of the cluster
   that loses its parent is re-parented to the guard, not to init;
2. starts the cluster (``ray.init``) and is its driver: it reads the units to run from its stdin, runs
   them as Ray tasks and writes each unit's results to its stdout as soon as they are ready (the
   command saves them to the store; only the command writes there);
3. watches its stdin: end of file before the command said ``stop`` means the command died (in any way,
   SIGKILL included), and the guard kills its whole process tree at once;
4. on ``stop``, shuts Ray down and kills whatever of the tree is left, then exits.

The guard is the driver (rather than the command connecting to the guard's cluster) so that the
command needs no access to the cluster's authentication token. Messages are one line each: a
base64-encoded pickle of a tuple. Linux only (the subreaper); elsewhere the command starts Ray
in-process.
"""

from __future__ import annotations

import base64
import os
import pickle
import signal
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36


def available() -> bool:
    return sys.platform.startswith("linux")


def encode(message: tuple) -> str:
    return base64.b64encode(pickle.dumps(message)).decode("ascii") + "\n"


def decode(line: str) -> tuple:
    return pickle.loads(base64.b64decode(line))


def _become_subreaper() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # gone meanwhile
            continue
        # the name (field 2) may hold spaces and parentheses: the fields after the last ')' are fixed
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def kill_tree(timeout: float = 10.0) -> None:
    """SIGKILL every descendant of this process (orphans come back to it, the subreaper) and reap them."""
    deadline = time.monotonic() + timeout
    me = os.getpid()
    while time.monotonic() < deadline:
        children = _children(me)
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:
            try:
                reaped, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if reaped == 0:
                break
        time.sleep(0.05)


_CHANNEL = None  # the command's end of the protocol: the original stdout


def _send(message: tuple) -> None:
    _CHANNEL.write(encode(message))
    _CHANNEL.flush()


def main() -> int:
    global _CHANNEL
    _CHANNEL = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed (Ray, a library) goes to stderr, never into the protocol
    _become_subreaper()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command's Ctrl-C reaches the guard as "stop" or EOF
    units: list[tuple] = []
    have_units, stopping = threading.Event(), threading.Event()

    def watch_stdin() -> None:
        for line in sys.stdin:
            message = decode(line)
            if message[0] == "unit":
                units.append(message[1:])
            elif message[0] == "go":
                have_units.set()
            elif message[0] == "stop":
                stopping.set()
                return
        # end of file without "stop": the command is gone; so is its cluster, at once
        kill_tree()
        os._exit(1)

    threading.Thread(target=watch_stdin, name="torchfpe-ray-guard-stdin", daemon=True).start()
    try:
        import ray

        from .unit import gpus_per_unit, run_unit

        ray.init(include_dashboard=False, log_to_driver=False)
        _send(("ready",))
        have_units.wait()
        # a unit is run_unit's arguments (experiment, configs, threads, device, layout, plugins): a CUDA unit asks Ray
        # for its GPU; each task imports the unit's plugins before it runs
        remotes = {gpus: ray.remote(num_cpus=1, num_gpus=gpus)(run_unit) for gpus in {gpus_per_unit(u[3]) for u in units}}
        pending = {remotes[gpus_per_unit(unit[3])].remote(*unit): index for index, unit in enumerate(units)}
        while pending and not stopping.is_set():
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    _send(("result", index, ray.get(ref)))
                except Exception as error:  # noqa: BLE001 - a failed unit is reported to the command
                    _send(("error", index, f"{type(error).__name__}: {error}"))
        _send(("done",))
        stopping.wait()
        ray.shutdown()
    except BaseException as error:  # noqa: BLE001 - told to the command, which raises it
        try:
            _send(("error", None, f"{type(error).__name__}: {error}"))
        except OSError:
            pass
    finally:
        kill_tree()
    return 0


if __name__ == "__main__":
    sys.exit(main())
