import subprocess
import sys

import pytest

pytestmark = pytest.mark.fast  # in-process, no training, no server

HEAVY = ("torch", "torchvision", "timm", "transformers")


def test_serving_imports_no_torch():
    code = (
        "import sys\n"
        "import serving.service, serving.cli, serving.runtime, serving.processing, serving.batching\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"serving imported: {out.stdout.strip()}"


def test_cli_parser_builds_without_torch():
    code = "import sys, training.cli; training.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_service_module_defers_the_model_stack():
    """`bentoml serve` imports the service module in its parent process only to read the service's
    configuration: ONNX Runtime, OpenCV and the tokenizers must load in the worker, not there."""
    code = (
        "import sys\n"
        "import serving.service\n"
        "print('loaded=' + ','.join(sorted(m for m in ('onnxruntime', 'cv2', 'tokenizers', 'soundfile') if m in sys.modules)))\n"
        "print(serving.service.LOADING)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, preload = out.stdout.strip().splitlines()
    loaded = loaded.removeprefix("loaded=")
    assert loaded == "", f"importing serving.service loaded {loaded}"
    assert preload == "None", "models are opened early only inside a BentoML worker"
