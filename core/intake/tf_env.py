"""Import TensorFlow/Keras lazily and quietly.

Importing TensorFlow costs seconds, so nothing imports it at module level: the
window appears first, and CLI commands that fail on bad input fail fast.
TensorFlow's C++ and absl chatter would also corrupt ``--json`` output, so it
is silenced before the first import.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Iterator

_lock = threading.Lock()


def _quiet_environment() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # oneDNN's kernels: Neural Cleanse's step 1.7x faster on this 2-core machine (16.8 -> 9.5-10.7 ms on
    # the zoo's wide model). Switching them off bought no reproducibility: Neural Cleanse repeats to the
    # last digit either way, MM-BD's margins vary in the 3rd-4th digit either way (measured 27 Nov 2026).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """TensorFlow's C++ start-up lines ("oneDNN custom operations are on", absl's warning) bypass
    TF_CPP_MIN_LOG_LEVEL; they would clutter every CLI command's stderr. Silenced at the file
    descriptor, only during the first import; a failing import still raises its Python exception."""
    if "tensorflow" in sys.modules:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (a windowed executable): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def keras() -> Any:
    """The ``keras`` module, imported once, thread-safely."""
    with _lock:
        _quiet_environment()
        with _stderr_silenced():
            import keras as _keras

        try:
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
        except ImportError:  # pragma: no cover - absl ships with TensorFlow
            pass
        return _keras


def tf() -> Any:
    """The ``tensorflow`` module, imported once."""
    keras()
    import tensorflow as _tf

    _tf.get_logger().setLevel("ERROR")
    return _tf


def preload_in_background() -> threading.Thread:
    """Start importing TensorFlow on a daemon thread (GUI start-up)."""
    thread = threading.Thread(target=tf, name="tensorflow-import", daemon=True)
    thread.start()
    return thread
