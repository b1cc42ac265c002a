"""export_quantized writes all or nothing: a foreign non-empty target is refused untouched, a failed
export leaves the earlier one loadable, a re-export lists only its own files in the manifest."""

import json

import pytest
import torch

from sdq.errors import SdqError
from sdq.export import export_quantized, load_quantized
from sdq.export.writer import MANIFEST_FILE, WEIGHTS_FILE
from tests.test_export import W4, W8A8, batch, make_student


def listing(d):
    return sorted((str(p.relative_to(d)), p.stat().st_size) for p in d.rglob("*"))


def test_foreign_non_empty_target_is_refused_untouched(tmp_path):
    run = tmp_path / "run"  # a training run dir: results and checkpoints, no export
    (run / "checkpoints").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    (run / "config.json").write_text('{"mine": true}')
    before, parent_before = listing(run), sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SdqError, match=r"not empty and holds no sdq export \(checkpoints, config.json, results"):
        export_quantized(make_student(W4), run)
    assert listing(run) == before and sorted(p.name for p in tmp_path.iterdir()) == parent_before
    (tmp_path / "file").write_text("x")
    with pytest.raises(SdqError, match="is a file"):
        export_quantized(make_student(W4), tmp_path / "file")


def test_failed_export_keeps_the_earlier_one(tmp_path, monkeypatch):
    out = tmp_path / "export"
    student = make_student(W8A8)
    export_quantized(student, out)
    before = listing(out)
    with torch.no_grad():
        ref = load_quantized(out, backend="int8")(**batch()).logits

    def broken(*args, **kwargs):
        raise RuntimeError("onnx build failed half way")

    monkeypatch.setattr("sdq.export.onnx_build.build_onnx", broken)
    with pytest.raises(RuntimeError, match="half way"):
        export_quantized(make_student(W8A8), out)  # weights + meta were written (to the temp dir) first
    assert listing(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with torch.no_grad():
        assert torch.equal(load_quantized(out, backend="int8")(**batch()).logits, ref)


def test_re_export_lists_only_its_own_files(tmp_path):
    out = tmp_path / "export"
    export_quantized(make_student(W8A8), out)
    (out / "export_report.json").write_text("{}")  # what `python -m sdq.export` adds after the export
    (out / "peers").mkdir()
    report = export_quantized(make_student(W4), out)  # weight-only: no ONNX, the earlier one is removed
    files = json.loads((out / MANIFEST_FILE).read_text())["files"]
    assert "export_report.json" not in files and WEIGHTS_FILE in files and "model.onnx" not in files
    assert not (out / "model.onnx").exists() and (out / "peers").is_dir() and report.onnx is None
    assert report.out_dir == str(out) and set(report.files) == set(files)
    (out / "export_report.json").write_text('{"rewritten": true}')  # no effect on the verified files
    with torch.no_grad():
        load_quantized(out, backend="torch")(**batch())
