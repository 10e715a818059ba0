"""Memory bounds of the baselines: the ``cdpruner`` DPP keeps at most ``min(b, D)`` Cholesky
rows per image (the kernel's rank), not ``b``; measured as the peak resident memory of a child
process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import resource, torch, adaptive_prune as ap
    torch.manual_seed(0)
    x = torch.randn(24000, 8)                  # one 24k-token image, D = 8
    cu = torch.tensor([0, 24000])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = ap.prune(x, cu, budget=3000, method="cdpruner")
    assert res.indices.numel() == 3000
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) // 1024)            # MiB (ru_maxrss is in KiB on Linux)
    """
)


def test_cdpruner_memory_does_not_grow_with_the_budget():
    # unbounded, the DPP's Cholesky rows would take 24000 x 3000 x 8 bytes = 549 MiB
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, check=True
    )
    grown_mib = int(out.stdout.strip().splitlines()[-1])
    assert grown_mib < 200, f"cdpruner grew the peak memory by {grown_mib} MiB"
