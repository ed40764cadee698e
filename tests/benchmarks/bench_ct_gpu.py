"""Chest CT detector benchmark on a GPU (issue 10, ../shared/benchmarks.md "GPU inference").

Reference, measured in the same run: MONAI's own ``RetinaNetDetector`` in the LUNA16 detection bundle's configuration
(3D ResNet50-FPN, conv1 stride [2,2,1], anchors [[6,8,4],[8,6,5],[10,10,6]], sliding window 512x512x192, overlap
0.25), fp32, on a 512x512x256 chest phantom volume. The same network object, hence the same weights (seeded, not
trained: no LUNA16-size weights exist in this project; timings and numerical agreement do not depend on training),
then run with each lever added in turn:

  whole volume in one pass (no windows) -> bf16 autocast -> channels_last_3d -> torch.compile (inductor, cached).

Each row: median wall time per volume (CUDA-synchronised), the ratio to the reference, TFLOP/s counted by
``torch.utils.flop_counter`` for one pass, and agreement with the reference's detections (boxes matched at IoU >= 0.9,
the largest score difference among matches). Stage 2 is timed separately: the shipped bundle's classifier on N nodule
crops one by one vs in one batch, and the pre-processing (HU window + resampling) on the CPU (SimpleITK) vs on the
GPU (torch). Needs CUDA for the figures the target is about; ``--device cpu --size 64 --depth 48`` checks it runs.

Run: .venv/bin/python tests/benchmarks/bench_ct_gpu.py [--repeats 5] [--compile-mode max-autotune-no-cudagraphs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> tuple[float, Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def flops_of(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def phantom_volume(size: int, depth: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A chest phantom (HU, (z, y, x)) from the synthetic cohort on a size x size x depth grid over 320 mm in z,
    and its spacing (x, y, z) in mm."""
    from devtools.synthetic.chest_ct import Grid, generate_case, render_volume

    grid = Grid(size, depth, 320.0 / depth)
    return render_volume(generate_case(5, 0, grid, min_nodules=2)), (grid.pixel_mm, grid.pixel_mm, grid.slice_mm)


def box_agreement(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Share of the reference's boxes matched by a box at IoU >= 0.9, and the largest score gap among matches."""
    from monai.data.box_utils import box_iou

    rb, rs = ref["boxes"].float().cpu(), ref["labels_scores"].float().cpu()
    gb, gs = got["boxes"].float().cpu(), got["labels_scores"].float().cpu()
    if len(rb) == 0:
        return (1.0 if len(gb) == 0 else 0.0), 0.0
    if len(gb) == 0:
        return 0.0, float("nan")
    iou = np.asarray(box_iou(rb.numpy(), gb.numpy()))
    best = iou.argmax(axis=1)
    matched = iou[np.arange(len(rb)), best] >= 0.9
    gaps = np.abs(rs.numpy()[matched] - gs.numpy()[best[matched]])
    return float(matched.mean()), float(gaps.max()) if gaps.size else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--depth", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for the last lever")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--crops", type=int, default=32, help="nodule crops for the stage-2 timing")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on the GPU machine, or pass --device cpu with a small --size to check the script")
        return 2
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")  # compile once per machine, then load the cache
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    from pipelines.chest_ct_nodule.inference import load_ct_bundle, normalised
    from pipelines.common import fuse
    from pipelines.chest_ct_nodule.networks import LUNA16, build_detector, build_network
    from pipelines.registry import SHIPPED_BUNDLES

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{os.cpu_count()}"
    hu, voxel_mm = phantom_volume(args.size, args.depth)
    x = torch.from_numpy(normalised(hu, LUNA16.intensity_hu))[None, None].to(device)
    patch = tuple(min(p, s) for p, s in zip(LUNA16.infer_patch_size or x.shape[2:], x.shape[2:]))
    config = replace(LUNA16, infer_patch_size=patch)
    torch.manual_seed(0)
    network = build_network(config).to(device).eval()
    detector = build_detector(network, config)
    detector.eval()
    if detector.inferer is not None:  # the reference stitches on the device it runs on
        detector.inferer.device = device

    rows: list[tuple[str, float, int, Any]] = []
    print(f"{machine}: {args.size}x{args.size}x{args.depth}, patch {patch}; measuring (one line per lever as it is "
          "done, the table at the end)", file=sys.stderr, flush=True)

    def progress() -> None:  # a run stopped early still shows what it measured
        name, seconds, _, _ = rows[-1]
        print(f"  {name}: {seconds * 1000:.0f} ms", file=sys.stderr, flush=True)

    def run(use_inferer: bool, autocast: bool) -> Any:
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else nullcontext()
        with torch.inference_mode(), ctx:
            return detector(x, use_inferer=use_inferer)[0]

    ref_s, ref = timed(lambda: run(True, False), device, args.repeats)
    rows.append(("MONAI RetinaNetDetector, sliding window, fp32 (reference)", ref_s,
                 flops_of(lambda: run(True, False)), ref))
    progress()
    whole_s, whole = timed(lambda: run(False, False), device, args.repeats)
    rows.append(("whole volume, one pass, fp32", whole_s, flops_of(lambda: run(False, False)), whole))
    progress()
    bf16_s, bf16 = timed(lambda: run(False, True), device, args.repeats)
    rows.append(("+ bf16 autocast", bf16_s, rows[-1][2], bf16))
    progress()
    network.to(memory_format=torch.channels_last_3d)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    cl_s, cl = timed(lambda: run(False, True), device, args.repeats)
    rows.append(("+ channels_last_3d", cl_s, rows[-1][2], cl))
    progress()
    if not args.no_compile:
        start = time.perf_counter()
        detector.network = torch.compile(network, mode=args.compile_mode, dynamic=False)  # type: ignore[assignment]
        run(False, True)
        _sync(device)
        compile_s = time.perf_counter() - start
        comp_s, comp = timed(lambda: run(False, True), device, args.repeats)
        rows.append((f"+ torch.compile ({args.compile_mode}; first call {compile_s:.0f} s)", comp_s, rows[-1][2], comp))
        progress()

    print(f"Machine: {machine}; torch {torch.__version__}; volume {args.size}x{args.size}x{args.depth}; "
          f"TF32 off; {args.repeats} repeats (median)\n")
    print("| detector (LUNA16 configuration, same weights) | ms per volume | x faster than reference | TFLOP/s | "
          "reference boxes matched (IoU >= 0.9) | max score gap |")
    print("|---|---|---|---|---|---|")
    for name, seconds, flops, out in rows:
        matched, gap = box_agreement(ref, out)
        print(f"| {name} | {seconds * 1000:.0f} | {ref_s / seconds:.2f} | {flops / seconds / 1e12:.1f} | "
              f"{matched:.3f} | {gap:.4f} |")

    # stage 2 and pre-processing with the shipped bundle
    loaded = load_ct_bundle(SHIPPED_BUNDLES / "chest-ct-nodule", str(device))
    cfg = loaded.fusion_config
    c = cfg.crop_size
    # the classifier's own input layout (labs as the bundle encodes them, demographics when it reads them), made the
    # way the pipeline makes it; labs and notes missing, so no text encoder is timed
    rng = np.random.default_rng(0)
    inputs = fuse.prepare_inputs(cfg, rng.random((args.crops, c, c, c), dtype=np.float32), [{}] * args.crops,
                                 [None] * args.crops, None, ages=[64.0] * args.crops, sexes=["F"] * args.crops)
    tensors = inputs.tensors(device)
    model = loaded.classifier

    def one_by_one() -> Any:
        with torch.inference_mode():
            return [model(*(t[i:i + 1] for t in tensors)) for i in range(args.crops)]

    def batched() -> Any:
        with torch.inference_mode():
            return model(*tensors)

    single_s, _ = timed(one_by_one, device, args.repeats)
    batch_s, _ = timed(batched, device, args.repeats)
    print(f"\n| stage 2 ({args.crops} nodule crops of {c}^3, shipped classifier) | ms |\n|---|---|\n"
          f"| one crop per call | {single_s * 1000:.1f} |\n| one batch | {batch_s * 1000:.1f} "
          f"({single_s / batch_s:.1f}x) |")

    import SimpleITK as sitk

    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(voxel_mm)
    spacing = loaded.detector_config.spacing_mm

    def cpu_pre() -> Any:
        smooth = image
        for axis in range(3):
            old = image.GetSpacing()[axis]
            if spacing[axis] > old * 1.05:
                sigma = 0.5 * (spacing[axis] ** 2 - old ** 2) ** 0.5
                smooth = sitk.RecursiveGaussian(smooth, sigma, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis)
        size = [int(round(s * o / n)) for s, o, n in zip(image.GetSize(), image.GetSpacing(), spacing)]
        return sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing)

    hu_gpu = torch.from_numpy(hu).to(device)

    def gpu_pre() -> Any:
        out_size = [int(round(s * o / n)) for s, o, n in zip(hu.shape, voxel_mm[::-1], spacing[::-1])]
        v = hu_gpu[None, None].float()
        v = torch.nn.functional.avg_pool3d(v, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.nn.functional.interpolate(v, size=out_size, mode="trilinear", align_corners=False)

    cpu_s, _ = timed(cpu_pre, torch.device("cpu"), max(1, args.repeats // 2))
    gpu_s, _ = timed(gpu_pre, device, args.repeats)
    print(f"\n| pre-processing to {spacing} mm | ms |\n|---|---|\n| CPU, SimpleITK (as the pipeline does) | "
          f"{cpu_s * 1000:.0f} |\n| {device.type}, torch (smoothing + trilinear) | {gpu_s * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
