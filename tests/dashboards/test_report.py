"""The HTML report from a real sqlite MLflow store, served on loopback and opened in headless Chromium."""
import functools
import http.server
import re
import shutil
import subprocess
import threading

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tipslab.dashboards.report import pca_rgb, write_report
from tipslab.dashboards.store import load_sweep

SPEC = {
    "name": "rep", "title": "Losses", "size": "smoke", "baseline": "clip",
    "variants": {"clip": {}, "clip+mim": {}},
    "metrics": [{"key": "eval/scenes/i2t_r1", "header": "I→T", "goal": "max"}],
    "reference": {"source": "TIPS Table 1", "clip": {"eval/scenes/i2t_r1": 79.1}},
}


def make_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("rep", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, tags={"tipslab.role": "sweep", "tipslab.sweep_id": "s1"}).info.run_id
    client.log_dict(parent, SPEC, "spec.json")
    rng = np.random.default_rng(0)
    for i, (variant, seed) in enumerate([("clip", 0), ("clip", 1), ("clip+mim", 0)]):
        run = client.create_run(exp, run_name=f"{variant}-seed{seed}", tags={
            "mlflow.parentRunId": parent, "tipslab.role": "trial", "tipslab.variant": variant,
            "tipslab.seed": str(seed)}).info.run_id
        for step in range(5, 30, 5):
            client.log_metric(run, "train/loss", 5.0 - step / 10 + i, step=step)
            client.log_metric(run, "train/lr", 1e-3, step=step)
        client.log_metric(run, "eval/scenes/i2t_r1", 10.0 + 5 * i)
        if variant == "clip+mim":  # patch tokens of 2 images on an 8x8 grid, as the evaluation writes them
            path = tmp_path / "features.npz"
            np.savez(path, patch_tokens=rng.normal(size=(2, 64, 16)).astype(np.float32),
                     images=rng.integers(0, 255, size=(2, 16, 16, 3), dtype=np.uint8), keys=np.array(["x", "y"]))
            client.log_artifact(run, str(path))
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri


def test_pca_maps_are_rgb_in_the_unit_cube():
    tokens = np.random.default_rng(1).normal(size=(2, 4, 4, 8)).astype(np.float32)
    rgb = pca_rgb(tokens)
    assert rgb.shape == (2, 4, 4, 3) and rgb.min() == 0.0 and rgb.max() == 1.0


def test_report_writes_table_curves_bars_and_pca_maps_and_names_runs_without_features(tmp_path):
    out = tmp_path / "report"
    page = open(write_report(load_sweep(make_store(tmp_path), "rep"), str(out))).read()
    images = re.findall(r'<img src="img/([^"]+)"', page)
    assert sorted(images) == ["bars_eval_scenes_i2t_r1.png", "curves_clip.png", "curves_clip_mim.png",
                              "pca_clip_mim_seed0.png"]
    assert all((out / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in images)
    assert "<td>clip (baseline)</td><td>12.50 ± 3.54 (n=2)</td>" in page
    assert "No features.npz artifact for: clip (seed 0), clip (seed 1)" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (make test installs Debian's chromium)")
def test_report_shows_its_table_and_images_in_headless_chromium(tmp_path):
    out = tmp_path / "report"
    write_report(load_sweep(make_store(tmp_path), "rep"), str(out))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000", "--dump-dom",
             f"http://127.0.0.1:{server.server_address[1]}/index.html"],
            capture_output=True, text=True, timeout=300).stdout
    finally:
        server.shutdown()
    # The page's own script counts the images that decoded (complete, with a natural width).
    assert re.search(r'data-images="4"', dom) and re.search(r'data-images-loaded="4"', dom), dom[:2000]
    assert "<caption>Losses</caption>" in dom and "<td>clip+mim</td>" in dom
