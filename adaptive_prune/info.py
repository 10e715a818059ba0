"""``python -m adaptive_prune info`` (or ``python -m adaptive_prune.info``): what is installed.

Prints versions, devices, which backends (reference, C++, Triton) are available (and why not),
and which one each op will use on each device. Paste it into bug reports.
"""

from __future__ import annotations

import os
import platform
import sys

import torch


def report() -> str:
    import adaptive_prune as ap

    from . import _backend, ops

    lines = [f"adaptive_prune {ap.__version__}  ({os.path.dirname(ap.__file__)})"]
    lines.append(f"python {platform.python_version()}  {platform.platform()}")
    lines.append(f"torch {torch.__version__}")
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton: not installed")
    try:
        import numpy

        lines.append(f"numpy {numpy.__version__}")
    except ImportError:
        lines.append("numpy: not installed")
    lines.append(
        f"cpu: {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}"
    )
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            lines.append(f"cuda:{i}: {torch.cuda.get_device_name(i)}")
    else:
        lines.append("cuda: not available")
    lines.append("")
    lines.append("backends:")
    lines.append("  reference: available (pure PyTorch, every device)")
    for name in ("cpp", "triton"):
        if name in _backend.UNAVAILABLE:
            lines.append(f"  {name}: unavailable ({_backend.UNAVAILABLE[name]})")
        elif name == "cpp":
            from . import _ext

            st = _ext.status()
            lines.append(
                f"  cpp: available ({st['path']}, {st['compiler']}, {st['isa']}, "
                f"{st['num_threads']} threads)"
            )
        else:
            lines.append(f"  {name}: available")
    lines.append(f"  ADAPTIVE_PRUNE_BACKEND={_backend.requested()}")
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("ADAPTIVE_PRUNE_") or k == "TRITON_INTERPRET"
    }
    for k, v in sorted(env.items()):
        lines.append(f"  env {k}={v}")
    lines.append("")
    lines.append(f"{'op':<20}{'cpu':<12}{'cuda':<12}")
    for name in ops.ALL_OPS:
        lines.append(
            f"{name:<20}{_backend.active(name, 'cpu'):<12}{_backend.active(name, 'cuda'):<12}"
        )
    lines.append("")
    lines.append(f"methods: {', '.join(sorted(ap.METHODS))}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
