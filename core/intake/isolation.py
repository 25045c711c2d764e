"""Run the pre-scan of an untrusted file in a child process with hard limits.

The checks in :mod:`core.intake.safety` refuse every bomb we know of before it is
allocated; this is the wall behind them. The scan runs in a fresh process
(``python -c``, or ``multiprocessing`` 'spawn' in the frozen app: no
TensorFlow, no Qt, no inherited threads or memory)
under ``resource.setrlimit`` (address space, CPU seconds, file size) and a
wall-clock timeout, so a bomb that slips past the checks (an HDF5 library bug,
a format nobody thought of) kills the child, not the analyst's session, and is
reported as a refusal: "exceeded N GB" or "took longer than N s".

The child needs only NumPy and h5py: spawning it costs a few hundred
milliseconds per file (``bench/bench_isolation.py`` measures it).
Set ``TROJANSCOPE_ISOLATION=0`` to scan in-process (debugging only).
"""

from __future__ import annotations

import contextlib

import importlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from core import errors
from core.intake.budget import GB, Budget
from core.errors import TrojanScopeError

# Address space the child needs beyond the budget: the interpreter, NumPy,
# h5py and libhdf5 map ~0.5 GB of virtual memory before reading anything.
INTERPRETER_ALLOWANCE = 1 * GB
CHILD_FILE_BYTES = 1 << 20  # the scan writes nothing; Python may try a .pyc
ROOT = Path(__file__).resolve().parents[2]  # the repository root (core/intake/isolation.py): core/ first on the path would shadow the standard library's inspect


def isolation_enabled() -> bool:
    return os.environ.get("TROJANSCOPE_ISOLATION", "1") != "0"


def run_isolated(target: str, args: tuple, source: str, budget: Budget, error: type = TrojanScopeError) -> Any:
    """Call ``module:function(*args)`` in a limited child and return its (small, JSON-able) result.

    A :class:`TrojanScopeError` raised in the child is raised here with the same
    class and message; a child killed by its limits becomes ``error``.
    """
    if not isolation_enabled():
        return _resolve(target)(*args)
    memory_limit = budget.memory_bytes + INTERPRETER_ALLOWANCE
    request = {"target": target, "args": list(args),
               "limits": {"memory": memory_limit, "cpu": budget.scan_seconds + 1, "fsize": CHILD_FILE_BYTES}}
    started = time.monotonic()
    run = _run_frozen if getattr(sys, "frozen", False) else _run_interpreter
    message, code = run(request, budget.scan_seconds)
    if message is None and code is None:
        raise error(
            f"refused: checking {source} took longer than {budget.scan_seconds} s "
            "(a file that slow to read is treated as hostile)"
        )
    if message is None:
        return _died(code, source, memory_limit, budget, time.monotonic() - started, error)
    status = message[0]
    if status == "ok":
        return message[1]
    if status == "memory":
        raise error(f"refused: {source} exceeded {_gb(memory_limit)} of memory while being checked")
    if status == "error":
        cls = getattr(errors, message[1], None)
        cls = cls if isinstance(cls, type) and issubclass(cls, TrojanScopeError) else error
        raise cls(message[2], fixed_by=tuple(message[3]) if len(message) > 3 else ())
    raise error(f"refused: checking {source} failed unexpectedly ({message[1]})")


def _run_interpreter(request: dict, timeout: float) -> tuple[Optional[list], Optional[int]]:
    """A fresh ``python -c`` child speaking JSON on stdin/stdout: nothing of the caller's
    ``__main__`` is re-run (multiprocessing's spawn would re-import it)."""
    code = f"import sys; sys.path[:0] = {[str(ROOT)]!r}; from core.intake.isolation import stdio_child; stdio_child()"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    try:
        out, _ = child.communicate(json.dumps(request).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return None, None
    try:
        return json.loads(out), child.returncode
    except ValueError:
        return None, child.returncode


def _run_frozen(request: dict, timeout: float) -> tuple[Optional[list], Optional[int]]:
    """In the frozen app there is no ``python``: multiprocessing 'spawn' re-enters main.py,
    whose ``freeze_support()`` runs the child."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_pipe_child, args=(sender, request), daemon=True, name="trojanscope-scan")
    child.start()
    sender.close()
    message = None
    try:
        if receiver.poll(timeout):
            try:
                message = json.loads(receiver.recv())
            except (EOFError, OSError, ValueError):
                message = None
        elif child.is_alive():
            child.kill()
            child.join(5.0)
            return None, None
    finally:
        child.join(1.0 if message is not None else 5.0)
        if child.is_alive():
            child.kill()
            child.join(5.0)
        receiver.close()
    return message, child.exitcode


def _died(code: Any, source: str, memory_limit: int, budget: Budget, seconds: float, error: type) -> Any:
    if code in (-signal.SIGXCPU, -signal.SIGKILL) and seconds >= budget.scan_seconds - 1:
        raise error(f"refused: checking {source} took longer than {budget.scan_seconds} s")
    if code == 1:
        raise error(f"refused: the separate process that checks {source} could not start or stopped (code 1)")
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
    try:
        import resource
    except ImportError:  # Windows: the timeout and the budget checks remain
        return
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
        with contextlib.suppress(ValueError, OSError):  # a limit this platform will not lower
            resource.setrlimit(kind, (value, hard))


def _serve(request: dict) -> list:
    """Run one request in this (child) process: limits first, then the scan."""
    try:
        _apply_limits(request["limits"])
        return ["ok", _resolve(request["target"])(*request["args"])]
    except MemoryError:
        return ["memory"]
    except TrojanScopeError as exc:
        return ["error", type(exc).__name__, str(exc), list(getattr(exc, "fixed_by", ()))]
    except BaseException as exc:  # noqa: BLE001  (reported to the parent as a refusal)
        return ["bug", f"{type(exc).__name__}: {str(exc)[:300]}"]


def stdio_child() -> None:
    """Entry point of the ``python -c`` child: one JSON request on stdin, one JSON answer on stdout."""
    request = json.loads(sys.stdin.buffer.read())
    answer = sys.stdout
    sys.stdout = sys.stderr  # nothing the scan prints can corrupt the answer
    reply = _serve(request)
    try:
        text = json.dumps(reply)
    except (TypeError, ValueError):
        text = json.dumps(["bug", "the scan returned something that is not JSON"])
    answer.write(text)
    answer.flush()


def _pipe_child(conn: Any, request: dict) -> None:
    """Entry point of the multiprocessing child (frozen app)."""
    try:
        conn.send(json.dumps(_serve(request)))
    except Exception:  # noqa: BLE001, S110 -- the parent reports the child's silence as a refusal
        pass
    finally:
        conn.close()
