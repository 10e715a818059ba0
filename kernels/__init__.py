"""Triton kernels of adaptive_prune, installed as ``adaptive_prune.kernels``.

One op per module, each with a private ``_<op>_kernel`` (plus helpers) and a public
``<op>_fwd`` launcher taking the op's arguments:

- :mod:`.budget_scores`    stage 0: norms, per-image sums, image similarity, multiplicity, att
- :mod:`.allocate_budgets` per-image budgets (water-filling + largest remainder)
- :mod:`.token_similarity` tiled cosine similarity: per-segment blocks and row reductions
  (text alignment, cross-image redundancy, nearest neighbour)
- :mod:`.greedy_select`    stage 1: one program per image runs the whole greedy loop
- :mod:`.global_greedy`    stage 2 filter: one program per request, gains recorded
- :mod:`.pareto_select`    fronts, crowding distance and the exact-k cut

:mod:`._compile_check` compiles every launch configuration for an NVIDIA arch without a GPU
(``python -m adaptive_prune.kernels._compile_check``). :mod:`adaptive_prune._triton_ops`
registers the launchers as the ``cuda`` kernels of the
``adaptive_prune::*`` ops. See docs/kernels.md.
"""
