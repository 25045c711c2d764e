"""Run the pre-scan of an untrusted file in a child process with hard limits.

The checks in :mod:`core.safety` refuse every bomb we know of before it is
allocated; this is the wall behind them. The scan runs in a fresh process
(``multiprocessing`` 'spawn': no TensorFlow, no Qt, no inherited threads)
under ``resource.setrlimit`` (address space, CPU seconds, file size) and a
wall-clock timeout, so a bomb that slips past the checks (an HDF5 library bug,
a format nobody thought of) kills the child, not the analyst's session, and is
reported as a refusal: "exceeded N GB" or "took longer than N s".

The child needs only NumPy and h5py: spawning it costs a few hundred
milliseconds per file (``bench/bench_isolation.py`` measures it).
Set ``TROJANSCOPE_ISOLATION=0`` to scan in-process (debugging only).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import time
from typing import Any, Callable

from core import errors
from core.budget import GB, Budget
from core.errors import TrojanScopeError

# Address space the child needs beyond the budget: the interpreter, NumPy,
# h5py and libhdf5 map ~0.5 GB of virtual memory before reading anything.
INTERPRETER_ALLOWANCE = 1 * GB
CHILD_FILE_BYTES = 1 << 20  # the scan writes nothing; Python may try a .pyc


def isolation_enabled() -> bool:
    return os.environ.get("TROJANSCOPE_ISOLATION", "1") != "0"


def run_isolated(target: str, args: tuple, source: str, budget: Budget, error: type = TrojanScopeError) -> Any:
    """Call ``module:function(*args)`` in a limited child and return its (small, picklable) result.

    A :class:`TrojanScopeError` raised in the child is raised here with the same
    class and message; a child killed by its limits becomes ``error``.
    """
    if not isolation_enabled():
        return _resolve(target)(*args)
    memory_limit = budget.memory_bytes + INTERPRETER_ALLOWANCE
    limits = {"memory": memory_limit, "cpu": budget.scan_seconds + 1, "fsize": CHILD_FILE_BYTES}
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, target, args, limits), daemon=True, name="trojanscope-scan")
    child.start()
    sender.close()
    started = time.monotonic()
    message = None
    try:
        if receiver.poll(budget.scan_seconds):
            try:
                message = receiver.recv()
            except (EOFError, OSError):
                message = None
        elif child.is_alive():
            raise error(
                f"refused: checking {source} took longer than {budget.scan_seconds} s "
                "(a file that slow to read is treated as hostile)"
            )
    finally:
        if child.is_alive():
            child.join(1.0 if message is not None else 0.1)
        if child.is_alive():
            child.kill()
            child.join(5.0)
        receiver.close()
    if message is None:
        return _died(child.exitcode, source, memory_limit, budget, time.monotonic() - started, error)
    status = message[0]
    if status == "ok":
        return message[1]
    if status == "memory":
        raise error(f"refused: {source} exceeded {_gb(memory_limit)} of memory while being checked")
    if status == "error":
        cls = getattr(errors, message[1], None)
        cls = cls if isinstance(cls, type) and issubclass(cls, TrojanScopeError) else error
        raise cls(message[2])
    raise error(f"refused: checking {source} failed unexpectedly ({message[1]})")


def _died(code: Any, source: str, memory_limit: int, budget: Budget, seconds: float, error: type) -> Any:
    if code in (-signal.SIGXCPU, -signal.SIGKILL) and seconds >= budget.scan_seconds - 1:
        raise error(f"refused: checking {source} took longer than {budget.scan_seconds} s")
    if code == -getattr(signal, "SIGXFSZ", 25):
        raise error(f"refused: checking {source} tried to write files")
    raise error(
        f"refused: {source} exceeded {_gb(memory_limit)} of memory while being checked "
        f"(the checker stopped with code {code})"
    )


def _gb(nbytes: int) -> str:
    return f"{nbytes / GB:.3g} GB"


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _apply_limits(limits: dict) -> None:
    import resource

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # each BLAS thread reserves address space
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write fails with EFBIG instead of killing
    for name, value in (("RLIMIT_AS", limits["memory"]), ("RLIMIT_CPU", limits["cpu"]), ("RLIMIT_FSIZE", limits["fsize"])):
        kind = getattr(resource, name, None)
        if kind is None:
            continue
        soft, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:
            resource.setrlimit(kind, (value, hard))
        except (ValueError, OSError):
            pass


def _child_main(conn: Any, target: str, args: tuple, limits: dict) -> None:
    """Entry point of the spawned child: limits first, then the scan, one message back."""
    try:
        _apply_limits(limits)
        result = _resolve(target)(*args)
        conn.send(("ok", result))
    except MemoryError:
        _send(conn, ("memory",))
    except TrojanScopeError as exc:
        _send(conn, ("error", type(exc).__name__, str(exc)))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent as a refusal)
        _send(conn, ("bug", f"{type(exc).__name__}: {str(exc)[:300]}"))
    finally:
        conn.close()


def _send(conn: Any, message: tuple) -> None:
    try:
        conn.send(message)
    except Exception:  # noqa: BLE001  (the parent reports the death instead)
        pass
