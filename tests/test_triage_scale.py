"""Triage at scale (issue 24): the results store, resuming after a SIGKILL, a Dask cluster losing a worker,
hostile files refused before any worker, tables built from the store at any moment.

Small hand-made models (tests/planted.py) judged by MM-BD alone keep each model to a second or two.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.detect.model_level.mmbd import MMBDSettings
from core.detect.model_level.triage import triage
from core.detect.model_level.triage_store import ResultStore
from core.intake.data import open_data
from core.jobs import collect
from tests.hostile import lambda_model
from tests.planted import CLASSES, H, W, save_linear_model

ROOT = Path(__file__).resolve().parent.parent
FAST_MM = MMBDSettings(starts=2, steps=300, learning_rate=0.05)
SLOPES = {"a_ok": (0.10, False), "b_bd": (0.10, True), "c_ok": (0.20, False), "d_bd": (0.15, True), "e_ok": (0.05, False),
          "f_bd": (0.12, True)}


def _clean(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, 200)
    x = rng.uniform(0, 0.1, (200, H, W, 1)).astype(np.float32)
    x[:, 12] = 0.0
    for i, k in enumerate(y):
        x[i, 2 * k : 2 * k + 2] = 0.5
    np.savez(path, x=x, y=y)
    return path


def _hostile_and_garbage(models: Path) -> None:
    lambda_model(models.parent / "marker.txt").save(models / "h_hostile.keras")
    (models.parent / "marker.txt").unlink(missing_ok=True)  # building the model ran its code once, here; triage must not
    (models / "g_garbage.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, Path]:
    """Six models (three with the planted backdoor), a hostile file and garbage; clean data."""
    root = tmp_path_factory.mktemp("scale")
    models = root / "models"
    models.mkdir()
    for name, (slope, planted) in SLOPES.items():
        save_linear_model(models / f"{name}.keras", slope=slope, planted=planted)
    _hostile_and_garbage(models)
    return models, _clean(root / "clean.npz")


def _cli(models: Path, clean: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), "triage", "--models", str(models), "--clean", str(clean), "--scale", "1",
            "--methods", "mmbd", "--mmbd-steps", "1500", "--store", str(store), "--json", "--quiet", *extra]


def _judged(store: Path) -> dict[str, tuple[str, float]]:
    """sha256 -> (run, finished) of the judged rows, read as another process would (the writer may be running)."""
    if not store.exists():
        return {}
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30) as db:
        try:
            return {sha: (run, finished) for sha, run, finished in
                    db.execute("SELECT sha256, run, finished FROM results WHERE status = 'judged'")}
        except sqlite3.OperationalError:  # the tables are not created yet
            return {}


def names(items: list) -> list[str]:
    return sorted(Path(i.source).name for i in items)


def _table(out: dict) -> list[tuple]:
    return [(Path(r["source"]).name, r["verdict"], r["score"], tuple(r["targets"]), r["summary"]) for r in out["results"]]


def test_a_triage_killed_midway_resumes_without_recomputing_or_losing_a_model(batch, tmp_path):
    models, clean = batch
    env = {**os.environ, "TROJANSCOPE_HOME": str(tmp_path / "home")}
    store = tmp_path / "killed.sqlite"
    victim = subprocess.Popen(_cli(models, clean, store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while len(_judged(store)) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(60)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read().decode()[-2000:]
    before = _judged(store)
    assert 2 <= len(before) < len(SLOPES)  # killed midway: some models finished, some not

    # the table at that moment, from the store: partial, nothing lost, nothing judged
    partial = json.loads(subprocess.run(_cli(models, clean, store, "--table-only"), capture_output=True, env=env, check=True).stdout)
    assert not partial["complete"] and partial["computed"] == 0
    assert len(partial["results"]) == len(before)
    assert len(partial["pending"]) + len(partial["skipped"]) == len(SLOPES) + 2 - len(before)

    resumed = json.loads(subprocess.run(_cli(models, clean, store), capture_output=True, env=env, check=True).stdout)
    after = _judged(store)
    assert {sha: after[sha] for sha in before} == before  # no finished model was judged again (same run, same time)
    assert len(after) == len(SLOPES) and resumed["complete"]
    assert resumed["reused"] >= len(before) and resumed["computed"] + resumed["reused"] == len(SLOPES) + 2  # the rest, the 2 refused

    whole = json.loads(subprocess.run(_cli(models, clean, tmp_path / "whole.sqlite"), capture_output=True, env=env, check=True).stdout)
    assert whole["reused"] == 0 and len(whole["results"]) == len(SLOPES)
    assert _table(resumed) == _table(whole)  # the same ranked table as an uninterrupted run
    assert sorted((Path(s["source"]).name, s["status"]) for s in resumed["skipped"]) == \
        sorted((Path(s["source"]).name, s["status"]) for s in whole["skipped"]) == [("g_garbage.h5", "refused"), ("h_hostile.keras", "refused")]


def test_a_cluster_retries_the_model_of_a_killed_worker_refuses_hostile_files_here_and_agrees_with_in_process(tmp_path):
    from tests.triage_tasks import logged_task

    models = tmp_path / "models"
    models.mkdir()
    save_linear_model(models / "victim.keras", slope=0.1, planted=True)
    save_linear_model(models / "ok.keras", slope=0.2, planted=False)
    save_linear_model(models / "poison.keras", slope=0.15, planted=False)
    _hostile_and_garbage(models)
    clean = open_data(_clean(tmp_path / "clean.npz"))
    logs = tmp_path / "logs"

    def kill_the_victims_worker() -> None:
        marker, deadline = logs / "victim.pid", time.monotonic() + 400
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            os.kill(int(marker.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_victims_worker, daemon=True)
    killer.start()
    store = tmp_path / "cluster.sqlite"
    _events, on_cluster = collect(triage(models, clean, "1", methods=["mmbd"], mmbd_settings=FAST_MM, store=store, workers=2,
                                         task=functools.partial(logged_task, log_dir=str(logs))))
    killer.join(1)
    assert (logs / "victim.pid").exists()

    assert names(on_cluster.rows) == ["ok.keras", "victim.keras"]
    assert names(on_cluster.failed) == ["poison.keras"] and "died 2 times" in on_cluster.failed[0].reason
    assert names(on_cluster.skipped) == ["g_garbage.h5", "h_hostile.keras"]
    called = sorted({p.name.rsplit(".", 1)[0] for p in (logs / "calls").iterdir()})
    assert called == ["ok.keras", "poison.keras", "victim.keras"]  # the hostile and the garbage file never became a task
    assert not (tmp_path / "marker.txt").exists()  # and the Lambda layer's code never ran
    attempts = {Path(s.source).name: (s.attempts, s.status) for s in ResultStore(store).all(on_cluster.settings)}
    assert attempts["victim.keras"] == (2, "judged") and attempts["poison.keras"] == (2, "failed")
    assert attempts["ok.keras"] == (1, "judged")

    _events, here = collect(triage(models, clean, "1", methods=["mmbd"], mmbd_settings=FAST_MM))
    same = {Path(r.source).name: (r.verdict, r.targets, round(r.score, 4)) for r in here.rows}
    assert {Path(r.source).name: (r.verdict, r.targets, round(r.score, 4)) for r in on_cluster.rows} == \
        {k: same[k] for k in ("ok.keras", "victim.keras")}
    assert same["victim.keras"][0] == "backdoored" and same["ok.keras"][0] == "clean"


def test_a_rerun_takes_judged_and_refused_models_from_the_store_and_tries_failed_ones_again(batch, tmp_path):
    models, clean = batch
    store = tmp_path / "s.sqlite"
    _events, first = collect(triage(models, open_data(clean), "1", methods=["mmbd"], mmbd_settings=FAST_MM, store=store))
    assert first.computed == len(SLOPES) + 2 and first.reused == 0
    with sqlite3.connect(store) as db:  # as if the work on one model had died
        db.execute("UPDATE results SET status = 'failed', reason = 'a test said so' WHERE source LIKE '%c_ok.keras'")
    events, second = collect(triage(models, open_data(clean), "1", methods=["mmbd"], mmbd_settings=FAST_MM, store=store))
    assert second.computed == 1 and second.reused == len(SLOPES) + 1
    assert [(r.source, r.verdict, r.score) for r in second.rows] == [(r.source, r.verdict, r.score) for r in first.rows]
    # the rows already judged are shown at once, before any new work
    from core.detect.model_level.triage import TriageRow

    assert len([e for e in events if isinstance(e, TriageRow)]) == len(SLOPES)
    _events, fresh = collect(triage(models, open_data(clean), "1", methods=["mmbd"], mmbd_settings=FAST_MM, store=store, fresh=True))
    assert fresh.computed == len(SLOPES) + 2 and fresh.reused == 0
    # other settings are another question: nothing is taken from the store
    _events, other = collect(triage(models, open_data(clean), "1", methods=["mmbd"], mmbd_settings=MMBDSettings(starts=2, steps=200),
                                    store=store))
    assert other.reused == 0 and other.settings != first.settings


def test_a_worker_answer_is_checked_before_it_is_stored():
    from core.detect.model_level.triage_work import outcome, parse_outcome

    good = outcome("refused", "/m/x.keras", "ab" * 32, 1.0, reason="not a model")
    assert parse_outcome(json.dumps(good), "/m/x.keras", "ab" * 32)["status"] == "refused"
    for bad, why in ((b"\x80\x04pickle", "not a TrojanScope result"), (json.dumps({**good, "engine": "other"}), "other detectors"),
                     (json.dumps({**good, "source": "/m/y.keras"}), "another file"), (json.dumps({**good, "status": "judged"}), "finite number"),
                     (json.dumps({**good, "format": "x"}), "not a TrojanScope")):
        with pytest.raises(ValueError, match=why):
            parse_outcome(bad, "/m/x.keras", "ab" * 32)


def test_the_progress_line_counts_done_failed_remaining_and_an_eta():
    from core.detect.model_level.triage import TriageStatus

    assert TriageStatus(500, 120, 3, 377, 100, 7_300).line() == "120/500 done (100 from earlier runs), 3 failed, 377 remaining, ETA 2 h 2 min"
    assert TriageStatus(20, 0, 0, 20, 0, None).line() == "0/20 done, 0 failed, 20 remaining, ETA unknown"


def test_table_outputs_csv_json_and_the_reports_triage_section(batch, tmp_path):
    import csv

    from core.report import write_triage

    models, clean = batch
    _events, result = collect(triage(models, open_data(clean), "1", methods=["mmbd"], mmbd_settings=FAST_MM, store=tmp_path / "s.sqlite"))
    written = [p for out in ("t.csv", "t.html") for p in write_triage(result, tmp_path / out)]
    assert [p.name for p in written] == ["t.csv", "t.html", "t.json"]
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [r["source"] for r in rows[: len(result.rows)]] == [r.source for r in result.rows]
    judged = [r for r in rows if r["status"] == "judged"]
    assert [r["verdict"] for r in judged] == [{"no evidence": "no evidence found"}.get(r.level, r.level) for r in result.rows]  # never "clean"
    assert "no evidence found" in {r["verdict"] for r in judged} and "backdoored" in {r["verdict"] for r in judged}
    assert sorted(r["status"] for r in rows[len(result.rows):]) == ["refused", "refused"]
    page = (tmp_path / "t.html").read_text()
    backdoored = sum(r.level == "backdoored" for r in result.rows)
    assert '<section id="triage">' in page and page.count('class="verdict backdoored"') == backdoored and ">clean<" not in page
    record = json.loads((tmp_path / "t.json").read_text())
    assert record["sections"] == {"triage": "run"} and len(record["triage"]["results"]) == len(SLOPES)


def test_clean_data_read_once_gives_each_model_what_the_file_would(tmp_path):
    """core.intake.data.in_memory: an HDF5 file (channels first, as the CSAW course's) and a folder of images of mixed
    sizes with an unreadable one, converted to two model shapes, equal reading the source itself."""
    import h5py

    from core.intake.data import Conversion, in_memory, load_arrays, write_png

    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "clean.h5", "w") as h5:
        h5["data"] = rng.integers(0, 256, (80, 3, 28, 28)).astype(np.uint8)
        h5["label"] = rng.integers(0, 10, 80)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(9):
        write_png(images / f"{i}.png", rng.integers(0, 256, (20 + i, 30 - i, 3)).astype(np.uint8))
    (images / "3b.png").write_bytes(b"not a png")
    h5_source = open_data(tmp_path / "clean.h5").allow(Conversion(resize=True, channels=True))
    for source, limit in ((h5_source, 50), (open_data(images), 7)):
        held = in_memory(source, limit)
        assert held.count == limit
        for shape in ((28, 28, 3), (20, 24, 1)):
            want, got = load_arrays(source, shape, limit), load_arrays(held, shape, limit)
            np.testing.assert_array_equal(got.x, want.x)
            assert (got.y is None and want.y is None) or np.array_equal(got.y, want.y)


def test_bytes_that_change_after_the_scan_are_refused_and_a_worker_scans_again(tmp_path):
    from dataclasses import replace

    from core.errors import ModelError, UnsafeModelError
    from core.intake.models import ScannedModel, load_scanned, scan_model

    save_linear_model(tmp_path / "m.keras", slope=0.1)
    scanned = scan_model(tmp_path / "m.keras")
    assert load_scanned(scanned, rescan=True).num_classes == CLASSES
    with pytest.raises(ModelError, match="not the ones that were checked"):
        middle = len(scanned.data) // 2
        load_scanned(replace(scanned, data=scanned.data[:middle] + bytes([scanned.data[middle] ^ 1]) + scanned.data[middle + 1:]))
    # bytes of a hostile model presented as already scanned: the worker's own scan refuses them, naming the file
    lambda_model(tmp_path / "marker.txt").save(tmp_path / "evil.keras")
    (tmp_path / "marker.txt").unlink(missing_ok=True)
    data = (tmp_path / "evil.keras").read_bytes()
    import hashlib

    forged = ScannedModel("/registry/evil.keras", data, "keras", None, hashlib.sha256(data).hexdigest())
    with pytest.raises(UnsafeModelError, match="/registry/evil.keras.*Lambda"):
        load_scanned(forged, rescan=True)
    assert not (tmp_path / "marker.txt").exists()
