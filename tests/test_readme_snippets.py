"""Every Python block of the README runs as written (in order, one namespace, in a scratch
directory so the runs it starts land there), and what the API section promises of `train()`'s
result holds for every method."""
import os
import re
from pathlib import Path

import pytest

from pipeline_helpers import CREST_TINY, KE_TINY, POSEAUG_TINY, one_thread  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 6


def test_every_python_block_runs(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for i, block in enumerate(BLOCKS):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as exc:  # name the block: the traceback's line numbers are the block's
            raise AssertionError(f"README python block {i + 1} failed:\n{block}") from exc
    assert (tmp_path / "runs" / "ke" / "summary.json").is_file()


@pytest.mark.parametrize("method, tiny, names", [
    ("ke", KE_TINY, ["model", "slim"]),
    ("crest", CREST_TINY, ["ema", "model"]),
    ("poseaug", POSEAUG_TINY, ["estimator", "augmentor", "d3d", "d2d"]),
])
def test_train_returns_the_summary_the_models_and_the_run_dir(method, tiny, names, tmp_path, one_thread):
    import json

    import torch

    import importlib
    module = importlib.import_module(f"fastsmall.methods.{method}")
    result = module.train(module.Config(out=str(tmp_path / "run"), **tiny))
    assert result == json.loads((tmp_path / "run" / "summary.json").read_text())  # still the summary dict
    assert result.summary == dict(result) and result.run_dir == tmp_path / "run"
    assert list(result.models) == names and result.model is result.models[names[0]]
    assert all(isinstance(m, torch.nn.Module) for m in result.models.values())
    assert os.path.isdir(result.run_dir / "plots")
    # a finished run resumed gives back the same networks (rebuilt from its last checkpoint)
    again = module.train(module.Config(out=str(tmp_path / "run"), resume=True, **tiny))
    assert list(again.models) == names and again == result
    for name in names:
        for a, b in zip(result.models[name].state_dict().values(), again.models[name].state_dict().values()):
            assert torch.equal(a, b), name
