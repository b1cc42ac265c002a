"""sdq.report.plots: the PNGs are written, sized for their content, and coloured by the sign of Δ."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from sdq.report import build_comparison, find_results, language_rows
from sdq.report.plots import plot_averages, plot_heatmap, plot_languages
from sdq.report.synthetic import fake_results, write_fake_sweep, write_json


def _table(tmp_path, drops=None):
    root = write_fake_sweep(tmp_path / "sweep", "xnli", drops=drops)
    return build_comparison(find_results(root))["xnli"]


def test_heatmap_and_averages(tmp_path):
    table = _table(tmp_path)
    heat = imread(plot_heatmap(table, tmp_path / "heatmap.png"))  # (H, W, 4) floats in [0, 1]
    bars = imread(plot_averages(table, tmp_path / "averages.png"))
    assert heat.shape[1] > 900 and heat.shape[0] > 400  # 16 columns × 13 rows stay legible
    assert bars.shape[0] > 400
    red = (heat[..., 0] > 0.5) & (heat[..., 1] < 0.2) & (heat[..., 2] < 0.2)  # saturated drops (ptq b2)
    assert red.sum() > 1000


def test_heatmap_without_deltas_is_skipped_and_small_tables_still_draw(tmp_path):
    write_json(tmp_path / "fp" / "results.json", fake_results("ner", method="fp"))
    table = build_comparison(find_results(tmp_path / "fp"))["ner"]
    assert plot_heatmap(table, tmp_path / "h.png") is None and not (tmp_path / "h.png").exists()
    assert plot_averages(table, tmp_path / "a.png").is_file()


def test_heatmap_gain_is_blue(tmp_path):
    table = _table(tmp_path, drops={"sdq": {4: -2.0}})  # a student better than its teacher everywhere
    img = imread(plot_heatmap(table, tmp_path / "gain.png"))
    img = img[:, : int(img.shape[1] * 0.8)]  # the cells, not the colourbar (which spans red to blue)
    blue = (img[..., 2] > 0.3) & (img[..., 0] < 0.2)
    red = (img[..., 0] > 0.5) & (img[..., 1] < 0.2) & (img[..., 2] < 0.2)
    assert blue.sum() > 1000 and red.sum() == 0


def test_language_plot(tmp_path):
    rows = language_rows(fake_results("pos", drop=1.0), "pos", "test")
    img = imread(
        plot_languages(rows, "pos", "acc", "pos test — me5_small sdq b8", tmp_path / "l.png", "FP teacher")
    )
    assert img.shape[1] > 1000  # 18 languages + avg
    no_ref = language_rows(fake_results("pos", method="fp"), "pos", "test")
    assert all(np.isnan(r.ref) for r in no_ref)
    assert plot_languages(no_ref, "pos", "acc", "fp", tmp_path / "fp.png").is_file()
