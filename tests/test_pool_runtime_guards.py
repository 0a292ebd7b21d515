"""With the runtime library imported before a load is measured (Backend.load_runtime):
a TFLite load still leaves onnxruntime out of the process, a missing onnxruntime is
reported by the load's own error, and a budget that does not fit still names the models
and megabytes. Written by review 21x."""

from __future__ import annotations

import pytest

from edge_agent.errors import ConfigError
from edge_agent.profiles import Profile
from edge_agent.runtime.pool import ModelPool, file_meter
from tests.agentutil import MODELS, run_python


def test_a_tflite_load_through_the_pool_leaves_onnxruntime_out() -> None:
    p = run_python(
        "import sys\nfrom pathlib import Path\nfrom edge_agent.profiles import Profile\n"
        "from edge_agent.runtime.pool import ModelPool\n"
        "ModelPool(Profile(name='t')).acquire(Path('models/vibration-ae-int8-tflite'), 'u')\n"
        "print('onnxruntime' in sys.modules)\n"
    )
    assert p.returncode == 0, p.stderr[-600:]
    assert p.stdout.split()[-1] == "False"


def test_without_onnxruntime_the_pool_reports_the_loads_own_error() -> None:
    p = run_python(
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'onnxruntime': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, B())\n"
        "from pathlib import Path\nfrom edge_agent.profiles import Profile\n"
        "from edge_agent.runtime.pool import ModelPool\n"
        "try:\n"
        "    ModelPool(Profile(name='t')).acquire(Path('models/vibration-ae-int8-onnx'), 'u')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    assert p.returncode == 0, p.stderr[-600:]
    assert "BackendUnavailableError onnxruntime is not installed" in p.stdout


def test_a_budget_that_does_not_fit_names_the_models_and_megabytes() -> None:
    pool = ModelPool(Profile(name="small"), budget_mb=0.05, meter=file_meter)
    pool.acquire(MODELS / "vibration-ae-int8-onnx", "a")
    with pytest.raises(ConfigError) as e:
        pool.acquire(MODELS / "vibration-ae-fp32-onnx", "b")
    msg = str(e.value)
    assert "vibration-ae-fp32-onnx needs" in msg
    assert "vibration-ae-int8-onnx" in msg
    assert "MB (for 'a')" in msg
    assert "model_memory_mb = 0.05 MB" in msg
