"""Worker-side wrappers of triage's Dask task, for tests (imported by the worker processes, so kept importable).

Each call is logged (one file per call, named after the model), then:
- the model named ``victim`` blocks on its first attempt after writing its worker's pid, so the test can
  SIGKILL that worker while the model is being judged (the real task runs meanwhile on a thread);
- the model named ``poison`` kills its own worker on every attempt;
- everything else runs the real task.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from core.detect.model_level.triage_cluster import judge_task


def logged_task(*args: Any, log_dir: str) -> str:
    source = Path(args[1])
    calls = Path(log_dir) / "calls"
    calls.mkdir(parents=True, exist_ok=True)
    (calls / f"{source.name}.{uuid.uuid4().hex[:8]}").write_text(str(os.getpid()))
    if source.stem == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    marker = Path(log_dir) / "victim.pid"
    if source.stem == "victim" and not marker.exists():
        answer: list[str] = []
        worker = threading.Thread(target=lambda: answer.append(judge_task(*args)), daemon=True)
        worker.start()  # the model is being judged for real when the test kills this process
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.replace(marker)
        time.sleep(600)  # killed long before this ends
    return judge_task(*args)
