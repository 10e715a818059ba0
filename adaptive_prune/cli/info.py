"""``python -m adaptive_prune info``: what is installed.

Prints versions, devices, which backends (reference, C++, Triton) are available (and why not),
and which one serves the ops on each device. Paste it into bug reports.
"""

from __future__ import annotations

import os
import platform
import sys

import torch


def report() -> str:
    import adaptive_prune as ap

    from .. import backends, ops

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
    st = backends.status()
    lines.append("")
    lines.append("backends:")
    lines.append("  reference: available (pure PyTorch, every device)")
    cpp = st["cpp"]
    if cpp["available"]:
        lines.append(
            f"  cpp: available ({cpp['path']}, {cpp['compiler']}, {cpp['isa']}, "
            f"{cpp['num_threads']} threads)"
        )
    else:
        lines.append(f"  cpp: UNAVAILABLE: {cpp['reason']}")
    tri = st["triton"]
    why = backends.unavailable("triton")
    lines.append(
        f"  triton: available (triton {tri.get('version')})" if why is None else f"  triton: {why}"
    )
    lines.append(f"  {backends.ENV_VAR}={st['env'] or ''} (process default: {backends.default()})")
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("ADAPTIVE_PRUNE_") or k == "TRITON_INTERPRET"
    }
    for k, v in sorted(env.items()):
        lines.append(f"  env {k}={v}")
    lines.append("")
    lines.append("backend serving the ops (" + ", ".join(ops.ALL_OPS) + "):")
    for dev in ("cpu", "cuda"):
        lines.append(f"  {dev} tensors: {st['auto'][dev]}")
    lines.append("")
    lines.append("methods (prune(..., method=NAME)):")
    for name in sorted(ap.METHODS):
        m = ap.METHODS[name]
        lines.append(f"  {name:<16}{'text-aware ' if m.text_aware else ''}{m.description}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
