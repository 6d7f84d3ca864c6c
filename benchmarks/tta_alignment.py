"""Does flip TTA help a trained binary model? Score the plain view, the mirrored view, their mean,
and the plain view shifted by a few pixels, on the run's validation split; print markdown.

    python benchmarks/tta_alignment.py runs/tgs-ema-60min --data ../shared/data/tgs-salt [--which best]

A model that is flip-invariant scores the mirrored view like the plain one, and then averaging
the two (`eval.tta: hflip`) usually helps. A model that depends on where a structure sits on its
pooling grid (2^depth pixels) loses accuracy under a one-pixel shift too; averaging then mixes in a
worse view. The shifted views roll the model-sized (padded) input and roll the output back;
`--vshifts` moves it vertically, which on seismic data also moves the depth the model sees.

    python benchmarks/tta_alignment.py runs/tgs-kornia-60min --data ../shared/data/tgs-salt --which last \
        --shifts 1,4 --vshifts 4,-4
"""

from __future__ import annotations

import argparse
import sys

import torch

from unetlab.data.formats.registry import load_for_config
from unetlab.data.splits import load_split
from unetlab.data.tensors import images_to_tensor, normalize
from unetlab.errors import UnetlabError
from unetlab.inference.predictor import Predictor, forward_probs, predict_batch
from unetlab.metrics import BinarySegmentationMetrics
from unetlab.run_folder import RunFolder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--data", required=True)
    parser.add_argument("--which", default="best")
    parser.add_argument("--shifts", default="1,2,8", help="horizontal pixel shifts to try, comma-separated")
    parser.add_argument("--vshifts", default="", help="vertical pixel shifts to try (depth moves), comma-separated")
    args = parser.parse_args()
    try:
        predictor = Predictor.load(RunFolder.resolve_checkpoint(args.run, args.which))
        if predictor.task.name != "binary":
            raise UnetlabError(f"{args.run}: a binary run is needed (this one is {predictor.task.name})")
        dataset = load_for_config(predictor.config, args.data)
        _, val = load_split(RunFolder(args.run).split_path, dataset.ids)
    except UnetlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = images_to_tensor(dataset.images[val])
    truth = torch.from_numpy(dataset.masks[val])
    height, width = images.shape[-2:]
    p = predictor

    def batched(view) -> torch.Tensor:
        return torch.cat([view(images[k : k + 64]) for k in range(0, len(images), 64)])

    def plain(x: torch.Tensor) -> torch.Tensor:
        return predict_batch(p.model, x, p.sizing, p.mean, p.std, p.precision, "none", p.channels_last)

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        return plain(x.flip(-1)).flip(-1)

    def shifted(pixels: int, dim: int = -1):
        def view(x: torch.Tensor) -> torch.Tensor:
            z = torch.roll(normalize(p.sizing.images(x), p.mean, p.std), pixels, dims=dim)
            probs = torch.roll(forward_probs(p.model, z, p.precision, p.channels_last), -pixels, dims=dim)
            return p.sizing.restore(probs, height, width)
        return view

    def pixel_list(text: str) -> list[int]:
        return [int(s) for s in text.split(",") if s.strip()]

    base, flip = batched(plain), batched(mirrored)
    views = [("plain", base), ("mirrored", flip), ("mean of plain and mirrored (hflip TTA)", (base + flip) / 2)]
    views += [(f"plain, input rolled {s} px sideways", batched(shifted(s))) for s in pixel_list(args.shifts)]
    views += [(f"plain, input rolled {s} px down", batched(shifted(s, -2))) for s in pixel_list(args.vshifts)]
    print(f"{args.run} ({args.which} checkpoint, epoch {p.epoch}), {len(val)} validation images, threshold "
          f"{p.threshold:.2f}\n")
    print("| view | TGS metric | IoU | precision | recall |\n|---|---|---|---|---|")
    for name, probs in views:
        metrics = BinarySegmentationMetrics(p.threshold)
        metrics.update(probs, truth)
        r = metrics.compute()
        print(f"| {name} | {r['tgs_map']:.4f} | {r['iou']:.4f} | {r['precision']:.4f} | {r['recall']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
