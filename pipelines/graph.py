"""The DALI graph: shards in, V augmented views of each image out, as one V-frame sequence per image.

One ``@pipeline_def`` serves the CPU (``device_id=None``) and the GPU (``device_id`` = CUDA index). Raw shards
(``.rgb``, the default up to 64 px) need no decoder: reading a sample is a copy, reshaped to (H, W, 3) with the
manifest's image size (measured faster than any decoder for 32x32 images), and on the GPU the pixels move to
the device with ``.gpu()`` right after reading. Encoded shards (``.jpg``, ``.png``, ``.webp``) go through
``fn.decoders.image``: ``device="cpu"`` (libjpeg-turbo, libpng, libwebp) on the CPU, ``device="mixed"`` on the
GPU (nvJPEG: the Huffman stage on the host, the rest on the device, the output a GPU image). Either way each
image is decoded once, and its V views are all cut from that one decode by the steps below.
DALI's fused decode-and-crop (one partial decode per view) was measured against this: faster for one view (1.3x
at 224 px), even at two, 1.7x slower at four (docs/benchmarks.md), and every multi-view recipe has V >= 2.

Per pipeline run (B images, V views each):

- ``fn.readers.webdataset`` reads the pixels (``.rgb`` or the encoded member, uint8) and ``.lbl`` (int32 fine,
  coarse, index); encoded pixels are decoded (see above);
- the random parameters of the run come from one ``fn.external_source`` (numpy, torchvision's sampling
  rules, see :mod:`ssrr.pipelines.sampling`);
- the geometric step runs once per view (V operator calls over the batch, each with its own per-sample
  parameters): for the resized crop one ``fn.resize`` (bilinear) over the crop window, whose x ends are
  swapped for a flip (crop, resize and flip in one pass); for the pad crop ``fn.slice`` with zero padding
  and ``fn.flip``; for flip-only recipes ``fn.flip``; for rotations ``fn.transpose`` / ``fn.flip``;
- the V views are stacked into one V-frame sequence per image (layout FHWC) and everything else runs once per
  image with per-frame arguments (``fn.per_frame``): this removes V-1 of every V per-sample operator
  overheads, which dominate 32x32 work on the CPU;
- recipes without colour changes: ``fn.crop_mirror_normalize`` ((x - 255 mean) / (255 std), FLOAT or
  FLOAT16);
- colour recipes: fixed order brightness, contrast, saturation, hue, then grayscale (torchvision draws a
  random order of the four jitters). All five are linear in RGB, so after the contrast centre is known they
  are one 3x3 matrix and an offset per view, and the normalisation folds into the same affine map: one
  ``fn.coord_transform`` per image (per-frame M and T), float output.

  * Contrast is centred on the view's own mean luminance (ITU-R 601 luma, as PIL's contrast; DALI's default
    centre, mid-range, is wrong for this recipe), computed per view in the pipeline (``fn.reductions.mean``
    over each frame). With that centre, brightness b then contrast c is c*b*x + (1-c)*b*luma: torchvision's
    brightness-then-contrast up to clamping.
  * Saturation s: s*x + (1-s)*luma (PIL's blend with the L image, exactly). Grayscale: luma on 3 channels.
  * Hue: a rotation about the gray axis of RGB space. PIL's HSV hue shift is not linear; DALI's ``fn.hsv``
    is a YIQ rotation whose error against PIL (mean 6.1 uint8 levels on CIFAR-10, h ~ U(-72, 72) degrees) is
    close to not shifting hue at all (6.5); the gray-axis rotation halves it (3.3).
  * Clamping: torchvision clamps to 0..255 after every step. ``contrast="fused"`` (the CPU default) folds
    b and c into the matrix too, so the only clamp is the final one, applied by the loader while it copies
    the views out (in normalised units: the uint8 range mapped through the normalisation), which is cheaper
    than any DALI clamp on the CPU. ``contrast="centre"`` clamps after brightness and contrast with
    ``fn.brightness_contrast`` (``contrast_center`` = the view's luma) at the cost of one more pass over the
    pixels; on CIFAR-10 the two give the same view statistics (per-channel std within 0.01).
  * On the GPU a reduction's output is a GPU tensor and cannot feed an operator's argument (such as
    ``contrast_center`` or coord_transform's T), so ``contrast="arith"`` computes the contrast with DALI
    arithmetic (clamped), then the colour matrix. The tests run all three forms on the CPU.

One definition, placement a parameter: the GPU's graph (:func:`contrast_for` picks its contrast form) differs from
the same graph placed on the CPU only where data lives (``.gpu()`` transfers, :func:`_placed`) and in the
decoder's backend (``mixed`` vs ``cpu``). :func:`graph_ops` lists a graph's operators and arguments without
building it (no GPU needed), so tests/test_pipeline_parity.py runs the GPU's graph on the CPU for every recipe and
encoding and checks it is the GPU's, operator for operator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath
from ssrr.pipelines.recipes import Recipe
from ssrr.pipelines.sampling import LUMA, draw

from ssrr.data import codec

READER = "Reader"


def contrast_for(gpu: bool) -> str:
    """The contrast form a placement runs: the GPU's reductions cannot feed operator arguments, so "arith" there;
    "fused" (one affine map, fastest) on the CPU."""
    return "arith" if gpu else "fused"


@dataclass(frozen=True)
class GraphSpec:
    """Everything the graph needs apart from the pipeline's own settings (batch size, threads, device)."""

    paths: tuple[str, ...]
    index_paths: tuple[str, ...]
    recipe: Recipe
    source_size: tuple[int, int]  # (H, W) of the stored images
    out_size: tuple[int, int]  # (H, W) of the views
    mean255: tuple[float, float, float]
    std255: tuple[float, float, float]
    half: bool  # FLOAT16 output instead of FLOAT (recipes without colour; colour recipes give FLOAT)
    training: bool
    shard_id: int
    num_shards: int
    initial_fill: int
    reader_seed: int
    gpu: bool
    contrast: str = "fused"  # "fused" (CPU default), "centre" (fn.brightness_contrast), "arith" (the GPU form)
    encoding: str = codec.RAW  # the manifest's: raw pixels, or jpeg / png / webp decoded by DALI

    @property
    def crop_views(self) -> int:
        return 1 if self.recipe.rotate else self.recipe.views

    def param_names(self) -> list[str]:
        """The arrays the parameter source yields each run, in order."""
        names: list[str] = []
        if self.recipe.crop == "resized":
            for v in range(self.crop_views):
                names += [f"roi_start{v}", f"roi_end{v}"]
        elif self.recipe.crop == "pad":
            for v in range(self.crop_views):
                names += [f"start{v}", f"flip{v}"]
        elif self.recipe.flip_p > 0:
            names += [f"flip{v}" for v in range(self.crop_views)]
        if self.recipe.colour:
            if self.contrast == "fused":
                names += ["shift"]
            else:
                names += ["gain", "shift"] if self.contrast == "arith" else ["brightness", "contrast"]
            names += ["colour_matrix"]
        return names


class ParamSource:
    """``fn.external_source`` callback: one call per pipeline run, B images' parameters in numpy."""

    def __init__(self, spec: GraphSpec, batch: int, rng: np.random.Generator) -> None:
        self.spec = spec
        self.batch = batch
        self.rng = rng
        self.names = spec.param_names()

    def __call__(self) -> list[np.ndarray]:
        spec, recipe = self.spec, self.spec.recipe
        size = spec.source_size if recipe.crop == "resized" else spec.out_size
        p = draw(self.rng, recipe, self.batch, *size)
        arrays: dict[str, np.ndarray] = {}
        if recipe.crop == "resized":
            start, end = p.roi()
            for v in range(spec.crop_views):
                arrays[f"roi_start{v}"] = np.ascontiguousarray(start[:, v])
                arrays[f"roi_end{v}"] = np.ascontiguousarray(end[:, v])
        elif recipe.crop == "pad":
            anchor = np.stack([p.top, p.left], axis=-1) - recipe.padding
            for v in range(spec.crop_views):
                arrays[f"start{v}"] = np.ascontiguousarray(anchor[:, v], dtype=np.int32)
                arrays[f"flip{v}"] = np.ascontiguousarray(p.flip[:, v], dtype=np.int32)
        elif recipe.flip_p > 0:
            for v in range(spec.crop_views):
                arrays[f"flip{v}"] = np.ascontiguousarray(p.flip[:, v], dtype=np.int32)
        if recipe.colour:
            if spec.contrast == "fused":
                arrays["shift"] = (p.brightness * (1 - p.contrast)).reshape(self.batch, recipe.views, 1)
            elif spec.contrast == "arith":
                shape = (self.batch, recipe.views, 1, 1, 1)
                arrays["gain"] = (p.brightness * p.contrast).reshape(shape)
                arrays["shift"] = (p.brightness * (1 - p.contrast)).reshape(shape)
            else:
                arrays["brightness"] = p.brightness
                arrays["contrast"] = p.contrast
            matrix = p.colour_matrix() / np.asarray(spec.std255, np.float32)[:, None]  # normalise the rows
            if spec.contrast == "fused":
                matrix *= (p.brightness * p.contrast)[..., None, None]
            arrays["colour_matrix"] = matrix
        return [np.ascontiguousarray(arrays[name], dtype=arrays[name].dtype) for name in self.names]


def _rotations(view, count: int) -> list:
    """view turned 0, 90, 180, 270 degrees counter-clockwise (``torch.rot90`` on (H, W)), HWC layout."""
    out = [view]
    if count > 1:
        out.append(fn.flip(fn.transpose(view, perm=[1, 0, 2], transpose_layout=False), horizontal=0, vertical=1))
    if count > 2:
        out.append(fn.flip(view, horizontal=1, vertical=1))
    if count > 3:
        out.append(fn.flip(fn.transpose(view, perm=[1, 0, 2], transpose_layout=False), horizontal=1, vertical=0))
    return out


def _stack(views: Sequence) -> object:
    return fn.stack(*views, axis=0, axis_name="F")


def _placed(node, spec: GraphSpec):  # type: ignore[no-untyped-def]
    """A CPU node moved to the pipeline's device (the only thing placement changes apart from the decoder)."""
    return node.gpu() if spec.gpu else node


def _pixels(stored, spec: GraphSpec):
    """The (H, W, 3) uint8 image of each sample, on the pipeline's device: raw bytes reshaped, or decoded once."""
    if spec.encoding == codec.RAW:
        height, width = spec.source_size
        return _placed(fn.reshape(stored, shape=[height, width, 3], layout="HWC"), spec)
    # EXIF orientation is ignored, as Pillow does when `ssrr shard` computes the statistics (and the shards hold
    # SIZE x SIZE images whatever the tag says). On the GPU, nvJPEG keeps its default chroma upsampling: a few
    # levels from the CPU decoder's at most (the -m gpu test in tests/test_pipeline_encoded.py checks it).
    return fn.decoders.image(
        stored, device="mixed" if spec.gpu else "cpu", output_type=types.RGB, adjust_orientation=False
    )


def _geometric_views(image, spec: GraphSpec, p: dict):  # type: ignore[no-untyped-def]
    """The views' crops and flips (resized crop, padded crop, or flip only) of one decoded image."""
    recipe = spec.recipe
    out_h, out_w = spec.out_size
    if recipe.crop == "resized":
        views = [
            fn.resize(
                image,
                roi_start=p[f"roi_start{v}"],
                roi_end=p[f"roi_end{v}"],
                roi_relative=False,
                size=[out_h, out_w],
                interp_type=types.INTERP_LINEAR,
            )
            for v in range(spec.crop_views)
        ]
    else:
        if spec.out_size != spec.source_size:
            image = fn.resize(image, size=[out_h, out_w], interp_type=types.INTERP_LINEAR, antialias=True)
        if recipe.crop == "pad":
            views = [
                fn.flip(
                    fn.slice(
                        image,
                        start=p[f"start{v}"],
                        shape=[out_h, out_w],
                        axis_names="HW",
                        out_of_bounds_policy="pad",
                        fill_values=0,
                    ),
                    horizontal=p[f"flip{v}"],
                )
                for v in range(spec.crop_views)
            ]
        elif recipe.flip_p > 0:
            views = [fn.flip(image, horizontal=p[f"flip{v}"]) for v in range(spec.crop_views)]
        else:
            views = [image] * spec.crop_views
    return views


def _colour(frames, spec: GraphSpec, p: dict):  # type: ignore[no-untyped-def]
    """Colour jitter and normalisation of the stacked views, in one fn.coord_transform per image."""
    # Colour and normalisation in one fn.coord_transform per image: out = M x + T per frame, where
    # M = diag(1/std) @ colour matrix (@ b*c for the fused form) and T holds the contrast offset and -mean/std.
    inv_std = 1.0 / np.asarray(spec.std255, np.float32)
    mean_over_std = (np.asarray(spec.mean255, np.float32) * inv_std)[None, :]  # (1, 3)
    if spec.contrast == "fused":
        means = fn.reductions.mean(frames, axes=[1, 2])  # (V, 3)
        luma = fn.reductions.sum(means * np.array([LUMA], np.float32), axes=[1], keep_dims=True)  # (V, 1)
        offset = luma * p["shift"] * inv_std[None, :] - mean_over_std  # (V, 3)
        frames = fn.coord_transform(frames, M=fn.per_frame(p["colour_matrix"]), T=fn.per_frame(offset))
    else:
        if spec.contrast == "arith":
            means = fn.reductions.mean(frames, axes=[1, 2], keep_dims=True)  # (V, 1, 1, 3)
            luma = means[:, :, :, 0:1] * LUMA[0] + means[:, :, :, 1:2] * LUMA[1] + means[:, :, :, 2:3] * LUMA[2]
            gain, shift = _placed(p["gain"], spec), _placed(p["shift"], spec)
            frames = fn.reshape(dmath.clamp(frames * gain + luma * shift, 0.0, 255.0), layout="FHWC")
        else:
            means = fn.reductions.mean(frames, axes=[1, 2])  # (V, 3)
            luma = means[:, 0] * LUMA[0] + means[:, 1] * LUMA[1] + means[:, 2] * LUMA[2]
            frames = fn.brightness_contrast(
                frames,
                brightness=fn.per_frame(p["brightness"]),
                contrast=fn.per_frame(p["contrast"]),
                contrast_center=fn.per_frame(luma),
            )
        frames = fn.coord_transform(frames, M=fn.per_frame(p["colour_matrix"]), T=list(-mean_over_std[0]))
    return frames


@pipeline_def
def view_pipeline(spec: GraphSpec, source: Callable[[], list[np.ndarray]] | None):
    """Outputs: views (B x [V, H, W, 3], FHWC, normalised; float32 and not yet clamped for colour recipes) and
    labels (B x [3] int32), both on the pipeline's device."""
    recipe = spec.recipe
    stored, labels = fn.readers.webdataset(
        paths=list(spec.paths),
        index_paths=list(spec.index_paths),
        ext=[codec.ENCODINGS[spec.encoding].ext, "lbl"],
        dtypes=[types.UINT8, types.INT32],
        shard_id=spec.shard_id,
        num_shards=spec.num_shards,
        random_shuffle=spec.training,
        initial_fill=spec.initial_fill,
        seed=spec.reader_seed,
        pad_last_batch=not spec.training,
        stick_to_shard=True,
        missing_component_behavior="error",
        name=READER,
    )
    image = _pixels(stored, spec)
    names = spec.param_names()
    p = (
        dict(zip(names, fn.external_source(source=source, num_outputs=len(names), batch=True), strict=True))
        if names
        else {}
    )
    views = _geometric_views(image, spec, p)
    if recipe.rotate:
        views = _rotations(views[0], recipe.views)
    frames = _stack(views)
    if not recipe.colour:
        views_out = fn.crop_mirror_normalize(
            frames,
            mean=list(spec.mean255),
            std=list(spec.std255),
            output_layout="FHWC",
            dtype=types.FLOAT16 if spec.half else types.FLOAT,
        )
        return views_out, _placed(labels, spec)
    frames = _colour(frames, spec, p)
    views_out = fn.reshape(frames, layout="FHWC")  # float32, unclamped: the loader clamps while copying out
    return views_out, _placed(labels, spec)


def _output_index(node) -> int:  # type: ignore[no-untyped-def]
    """Which output of its operator a DALI node is."""
    return next((i for i, out in enumerate(node.source._outputs) if out is node), 0)


def graph_ops(pipe) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """The operators of a defined (not necessarily built) pipeline in definition order: each one's name, device,
    constant arguments and inputs (as positions in this list). Defining needs no GPU, so a GPU pipeline can be
    inspected anywhere. Reads DALI's graph through its Python objects: a DALI that changes them fails the parity
    test loudly rather than passing it."""
    if not pipe._py_graph_built:
        pipe._build_graph()
    ops = list(pipe._ops)
    position = {id(op): i for i, op in enumerate(ops)}
    described = []
    for op in ops:
        args = {k: v for k, v in op._op._init_args.items() if k not in ("_module", "device")}
        inputs = [(position.get(id(node.source), -1), _output_index(node)) for node in op._inputs]
        described.append({"op": args.pop("_display_name", type(op._op).__name__), "device": op._op.device,
                          "args": args, "inputs": inputs})  # fmt: skip
    return described
