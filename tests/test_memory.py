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
    x = torch.randn(40000, 8)                  # one 40k-token image, D = 8
    cu = torch.tensor([0, 40000])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = ap.prune(x, cu, budget=4000, method="cdpruner")
    assert res.indices.numel() == 4000
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) // 1024)            # MiB (ru_maxrss is in KiB on Linux)
    """
)


def test_cdpruner_memory_does_not_grow_with_the_budget():
    # unbounded, the DPP's Cholesky rows would take 40000 x 4000 x 8 bytes = 1.2 GiB
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, check=True
    )
    grown_mib = int(out.stdout.strip().splitlines()[-1])
    assert grown_mib < 300, f"cdpruner grew the peak memory by {grown_mib} MiB"
