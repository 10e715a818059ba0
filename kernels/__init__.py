"""Triton kernels of adaptive_prune, installed as ``adaptive_prune.kernels``.

One op per module, each with a private ``_<op>_kernel`` (plus helpers) and a public
``<op>_fwd`` launcher taking the op's arguments:

- :mod:`.budget_scores`    stage 0: norms, per-image sums, image similarity, multiplicity, att,
  image mean directions, every token's text alignment
- :mod:`.allocate_budgets` per-image budgets (water-filling + largest remainder)
- :mod:`.token_alignment`  mean/max cosine of selected tokens to their request's text
- :mod:`.token_similarity` tiled cosine similarity: per-segment blocks and row reductions
  (shared by the alignment and the greedy kernels)
- :mod:`.greedy_select`    stage 1: one program per image runs the whole greedy loop
- :mod:`.global_greedy`    stage 2 filter: one program per request, gains recorded
- :mod:`.pareto_select`    fronts, crowding distance and the exact-k cut

:mod:`._compile_check` compiles every launch configuration for an NVIDIA arch without a GPU
(``python -m adaptive_prune.kernels._compile_check``). :mod:`adaptive_prune.backends.triton`
finds every launcher by that naming rule and serves the ``adaptive_prune::*`` ops with them;
a launcher raises :class:`._common.Unsupported` for an input its kernel does not take (the
routing then runs the reference). See docs/kernels.md.
"""
