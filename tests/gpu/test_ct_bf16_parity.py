"""The chest CT pipeline on a GPU finds what it finds in fp32 (issue 10): under bf16 autocast, every fp32 box has a
bf16 box at IoU >= 0.9, and the class probabilities of the same nodules stay within 0.02. Runs only where CUDA is
present (the device machine); everything else in the suite runs on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from devtools.synthetic.chest_ct import generate_case
from devtools.synthetic.chest_ct_io import write_case
from pipelines.chest_ct_nodule import inference
from pipelines.common.datalist import Clinical
from pipelines.common.volume import load_volume
from pipelines.registry import SHIPPED_BUNDLES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device machine)")


def test_bf16_autocast_on_the_gpu_gives_the_fp32_findings(tmp_path: Path) -> None:
    from monai.data.box_utils import box_iou

    bundle = SHIPPED_BUNDLES / "chest-ct-nodule"
    fp32 = inference.load_ct_bundle(bundle, "cuda", bf16=False)
    bf16 = inference.load_ct_bundle(bundle, "cuda", bf16=True)
    assert bf16.bf16 and not fp32.bf16
    clinical = Clinical(labs={"2039-6": 6.1, "25390-6": 3.3}, units={"2039-6": "ng/mL", "25390-6": "ng/mL"},
                        notes=("Part-solid nodule, enlarging solid component.",))
    compared = 0
    for index in (11, 4, 7):  # full-size cases with nodules of 17-26 mm, which the shipped detector finds
        folder, _ = write_case(generate_case(3, index, min_nodules=1), tmp_path / str(index))
        volume = load_volume(sorted(folder.glob("*.dcm")), fp32.series_criteria)
        boxes32, scores32 = inference.detect(fp32, volume, all_candidates=True)
        boxes16, scores16 = inference.detect(bf16, volume, all_candidates=True)
        confident = scores32 >= 0.5
        if confident.any():
            assert len(boxes16), "bf16 found nothing where fp32 found boxes"
            iou = np.asarray(box_iou(boxes32[confident], boxes16))
            assert (iou.max(axis=1) >= 0.9).all(), iou.max(axis=1)
            best = iou.argmax(axis=1)
            assert np.abs(scores32[confident] - scores16[best]).max() <= 0.02
        if len(boxes32):
            p32 = inference.classify(fp32, volume, boxes32, clinical, 64.0, "F")
            p16 = inference.classify(bf16, volume, boxes32, clinical, 64.0, "F")
            assert np.abs(p32 - p16).max() <= 0.02
            compared += len(boxes32)
    assert compared > 0, "no nodule was compared"
