"""The findings report: every section, valid embedded PNGs, JSON beside it, honest numbers."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

PNG_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def findings(demo_bundle, demo_model):
    """Real (small) results of every quick analysis on the session's demo BadNet."""
    from core.intake.data import open_data
    from core.jobs import run_job
    from core.report import quick_findings

    job = quick_findings(demo_model, open_data(demo_bundle.clean_valid), open_data(demo_bundle.poisoned_test),
                         open_data(demo_bundle.scan_dir), target=None, scale="255", fine_tune_epochs=1, overlays=8, top=2)
    result = run_job(job)
    result.inputs = {"model": str(demo_bundle.model), "clean": str(demo_bundle.clean_valid)}
    return result


@pytest.fixture(scope="module")
def written(findings, tmp_path_factory):
    from core.report import write_report

    out = tmp_path_factory.mktemp("report") / "findings.html"
    html_path, json_path = write_report(findings, out)
    return html_path, json_path, html_path.read_text(encoding="utf-8"), json.loads(json_path.read_text(encoding="utf-8"))


def test_report_has_every_section_and_json_beside_it(written):
    from core.report import SECTIONS

    html_path, json_path, page, record = written
    assert json_path == html_path.with_suffix(".json")
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
        assert section in record["sections"]
    assert record["sections"] == {"summary": "run", "evaluation": "run", "pruning": "run", "strip": "run", "purification": "not run",
                                  "inspector": "run", "cleanse": "not run", "repair": "not run"}
    assert "Not run" in page.split('id="cleanse"')[1]
    strip_part = page.split('id="strip"')[1].split("<section")[0]
    assert "normal fit" not in strip_part and "False rejection on unseen clean inputs" in strip_part  # how the threshold is set now
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained, nothing fetched


def test_embedded_figures_are_valid_pngs(written):
    from PIL import Image

    page = written[2]
    images = PNG_URI.findall(page)
    assert len(images) == 4  # pruning curve, STRIP histogram, flagged images, heat-maps
    for data in images:
        raw = base64.b64decode(data, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            assert image.width > 100 and image.height > 50


def test_json_numbers_match_an_independent_computation(written, demo_bundle, demo_model):
    """Clean accuracy and attack success recomputed with Keras' own predict on the raw arrays."""
    import h5py

    record = written[3]
    with h5py.File(demo_bundle.clean_valid, "r") as h5:
        x, y = np.transpose(h5["data"][:], (0, 2, 3, 1)), h5["label"][:].astype(int)
    with h5py.File(demo_bundle.poisoned_test, "r") as h5:
        xp, yp = np.transpose(h5["data"][:], (0, 2, 3, 1)), h5["label"][:].astype(int)
    acc = float(np.mean(demo_model.model.predict(x / 255.0, verbose=0).argmax(1) == y))
    asr = float(np.mean(demo_model.model.predict(xp / 255.0, verbose=0).argmax(1) == yp))
    assert record["evaluation"]["clean_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert record["evaluation"]["attack_success_rate"] == pytest.approx(asr, abs=1e-9)
    strip = record["strip"]
    assert strip["scanned"] == len(strip["results"]) == 60
    assert strip["flagged"] == sum(r["entropy"] < strip["threshold"] for r in strip["results"])
    assert len(record["pruning"]["curve"]) == record["pruning"]["channels_total"] + 1
    assert len(record["inspector"]["inspections"]) == 2


def test_report_without_results_says_not_run_everywhere(tmp_path):
    from core.report import SECTIONS, Findings, write_report

    html_path, json_path = write_report(Findings(), tmp_path / "empty.html")
    page = html_path.read_text(encoding="utf-8")
    record = json.loads(json_path.read_text(encoding="utf-8"))
    assert page.count('class="not-run"') == len(SECTIONS) + 1  # every section, and the key findings box
    assert set(record["sections"].values()) == {"not run"}


def test_report_never_overwrites_an_input_and_leaves_no_partial_file(tmp_path, findings):
    from core.errors import TrojanScopeError
    from core.report import write_report

    victim = tmp_path / "clean.html"
    victim.write_text("analyst's file")
    with pytest.raises(TrojanScopeError, match="refusing to write over"):
        write_report(findings, victim, inputs=[victim])
    assert victim.read_text() == "analyst's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.html"]


def test_report_escapes_paths_from_the_analyst(tmp_path, findings):
    import copy

    from core.report import render

    f = copy.copy(findings)
    f.inputs = {"model": "<script>alert(1)</script>.keras"}
    page, _ = render(f)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_cli_report_writes_html_and_json(demo_bundle, tmp_path, capsys):
    import cli

    out = tmp_path / "r.html"
    code = cli.main(["report", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid),
                     "--poisoned", str(demo_bundle.poisoned_test), "--fine-tune-epochs", "0", "--overlays", "8", "--top", "1",
                     "--scale", "255", "--out", str(out), "--json", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["report"] == str(out) and (tmp_path / "r.json").is_file()
    assert result["scanned"] == 540  # no --scan: the poisoned set is scanned (demo: 60 per class, target excluded)


def test_cli_report_refuses_a_non_html_output(demo_bundle, tmp_path, capsys):
    import cli

    code = cli.main(["report", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid),
                     "--out", str(tmp_path / "r.pdf")])
    assert code == 2 and "must end in .html" in capsys.readouterr().err
