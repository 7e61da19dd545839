"""The plot helper writes a real, non-blank PNG."""

import numpy as np
import pytest

import fluxtrain as ft


def read_png(path):
    from matplotlib import image

    return image.imread(str(path))


def test_plot_schedule_writes_a_decodable_non_blank_png(tmp_path):
    out = ft.plot_schedule(ft.OneCycle(100, 0.1), 100, tmp_path / "onecycle.png", title="1cycle")
    assert out == tmp_path / "onecycle.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = read_png(out)
    assert img.shape[0] == 350 and img.shape[1] == 600  # 6 x 3.5 inches at 100 dpi
    rgb = img[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 10  # a drawn curve, axes and text: not blank


def test_plot_schedule_compares_several_schedules_on_a_log_scale(tmp_path):
    curves = {"exp": ft.Exp(0.1, 0.95), "cos": ft.Cos(l0=1e-4, l1=1e-2, period=10)}
    out = ft.plot_schedule(curves, 60, tmp_path / "two.png", logy=True)
    assert read_png(out).std() > 0


def test_plot_schedule_errors_leave_no_file(tmp_path):
    with pytest.raises(IndexError):
        ft.plot_schedule(ft.Poly(1.0, 1, 10), 20, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ft.plot_schedule(ft.Exp(1.0, 0.5), 0, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
