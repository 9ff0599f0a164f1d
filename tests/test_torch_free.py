import subprocess
import sys

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
