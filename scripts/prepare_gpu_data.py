"""Make the training subset that travels to a lent GPU machine (scripts/gpu_session.sh).

    python scripts/prepare_gpu_data.py [SRC] [--out gpu_data/train] [--crop 192] [--max-mib 20]

Only the working tree and at most 64 MiB of carried paths reach the GPU
machine; the training set (../shared/data/train, 66 MB) does not fit. This
keeps EVERY image of SRC under the same relative path (so
mzsr_fast.train.data.holdout_paths holds out the same images as on the full
set), as a lossless PNG of its central crop x crop pixels, cut exactly as the
validation cuts (the central crop, then to a multiple of --scale), so
validation on held-out images sees the same pixels as on the full set and
training draws its patches from the centres. Fails when the result is over
--max-mib. The output folder is git-ignored (/gpu_data/); pass it to the
device call as carry=["gpu_data"] and to the script as --data gpu_data/train.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
from mzsr_fast.train.data import find_images  # noqa: E402
from mzsr_fast.train.validation import central_crop  # noqa: E402


def crop_image(image: Image.Image, crop: int, scale: int) -> Image.Image:
    """The pixels validation scores of image: its central crop
    (validation.central_crop), cut to a multiple of scale from the top left."""
    top, left, height, width = central_crop(image.size[1], image.size[0], crop)
    height, width = height - height % scale, width - width % scale
    return image.crop((left, top, left + width, top + height))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", nargs="?", default=str(HERE.parent / "shared" / "data" / "train"),
                        help="the training images (default ../shared/data/train)")
    parser.add_argument("--out", default=str(HERE / "gpu_data" / "train"), help="output folder (replaced)")
    parser.add_argument("--crop", type=int, default=192, help="central crop in pixels (default 192, the runs' "
                        "--val-crop)")
    parser.add_argument("--scale", type=int, default=2, help="the runs' scale (default 2)")
    parser.add_argument("--max-mib", type=float, default=20.0, help="fail when the subset is larger (default 20)")
    args = parser.parse_args(argv)
    if args.crop < 1 or args.scale < 1:
        parser.error(f"--crop and --scale: expected positive integers, got {args.crop} and {args.scale}")
    src, out = Path(args.src), Path(args.out)
    paths = find_images(src)  # raises DataError naming the folder when there are no images
    if out.exists():
        shutil.rmtree(out)
    total = 0
    for path in paths:
        rel = Path(os.path.relpath(path, src)).with_suffix(".png")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            crop_image(image.convert("RGB"), args.crop, args.scale).save(target, "PNG")
        total += target.stat().st_size
    mib = total / 2 ** 20
    if mib > args.max_mib:
        print(f"prepare_gpu_data: {len(paths)} images make {mib:.1f} MiB, over --max-mib {args.max_mib}; "
              f"use a smaller --crop", file=sys.stderr)
        return 1
    print(f"prepare_gpu_data: {len(paths)} images, central {args.crop} px crops, {mib:.1f} MiB in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
