"""The paper's table layout on H36M-format files (issue #14): rows estimator / + PoseAug, columns each
keypoint source on each evaluation set; tiny files written by the tests from the real cameras."""
import json

import numpy as np
import pytest
import torch

from fastsmall.methods.poseaug import camera as C
from fastsmall.methods.poseaug.data import h36m as H
from pipeline_helpers import one_thread  # noqa: F401
from test_poseaug_data import CAMERAS, _write_detections, _write_videopose3d, needs_shared

pytestmark = [needs_shared, pytest.mark.usefixtures("one_thread")]


def test_paper_table_rows_and_columns(tmp_path):
    from fastsmall.methods.poseaug import paper_table
    torch.manual_seed(0)
    cams = C.load_h36m_cameras(CAMERAS)
    seqs, _ = _write_videopose3d(tmp_path, cams, subjects=H.H36M_TRAIN + H.H36M_TEST, with_2d=True)
    _write_detections(tmp_path, cams, seqs, "cpn_ft_h36m_dbb")
    doc = tmp_path / "table.md"
    args = ["--data-dir", str(tmp_path), "--cameras", str(CAMERAS), "--keypoints", "gt", "cpn_ft_h36m_dbb",
            "--estimator-width", "32", "--epochs", "2", "--baseline-epochs", "1", "--batch-size", "128", "--warmup",
            "1", "--stride", "3", "--eval", "synthetic-broad", "--out", str(tmp_path / "runs"), "--doc", str(doc)]
    assert paper_table.main(args) == 0
    lines = doc.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    assert header.split(" | ")[1:] == ["gt: h36m MPJPE ↓", "gt: synthetic-broad MPJPE ↓",
                                       "cpn_ft_h36m_dbb: h36m MPJPE ↓", "cpn_ft_h36m_dbb: synthetic-broad MPJPE ↓ |"]
    rows = [line.split(" | ")[0] for line in lines if line.startswith("| simple_baseline")]
    assert rows == ["| simple_baseline", "| simple_baseline + PoseAug"]
    # a cell is the run's own last-epoch number (one seed: no spread)
    summary = json.loads((tmp_path / "runs" / "simple_baseline-cpn_ft_h36m_dbb" / "poseaug-seed0" / "summary.json")
                         .read_text())
    row = next(line for line in lines if line.startswith("| simple_baseline + PoseAug"))
    assert f"{summary['last']['h36m']['mpjpe']:.1f}" in row.split(" | ")[3]
    assert "--keypoints gt cpn_ft_h36m_dbb" in doc.read_text()
    # the detections were the estimator's input: the two sources give different errors
    other = json.loads((tmp_path / "runs" / "simple_baseline-gt" / "poseaug-seed0" / "summary.json").read_text())
    assert other["last"]["h36m"]["mpjpe"] != summary["last"]["h36m"]["mpjpe"]
