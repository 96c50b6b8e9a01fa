"""Decodes a rendered image with Pillow (an independent decoder, with AVIF
support in its wheels) and compares it with a lossless reference.

Usage: compare.py REFERENCE CANDIDATE
Prints one JSON object: the candidate's format, size and mode, the PSNR
in dB of what a viewer sees (over mid grey when there is transparency)
against the reference, and, for a reference with alpha, the PSNR of the
alpha channel.
"""

import json
import math
import sys

from PIL import Image, ImageChops


def channel_psnr(a: Image.Image, b: Image.Image) -> float:
    if a.size != b.size:
        return 0.0
    histogram = ImageChops.difference(a, b).histogram()
    squared = sum(count * (i % 256) ** 2 for i, count in enumerate(histogram))
    mse = squared / (a.size[0] * a.size[1] * len(a.getbands()))
    return 999.0 if mse == 0 else min(10 * math.log10(255**2 / mse), 999.0)


def visible(image: Image.Image) -> Image.Image:
    """What a viewer shows: RGBA composited over mid grey. Colour under a
    transparent pixel is invisible, and lossy encoders need not keep it."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def compare(reference: Image.Image, candidate: Image.Image) -> dict:
    report = {"psnr": channel_psnr(visible(reference), visible(candidate))}
    if "A" in reference.getbands():
        report["alpha_psnr"] = channel_psnr(
            reference.convert("RGBA").getchannel("A"),
            candidate.convert("RGBA").getchannel("A"),
        )
    return report


def main() -> None:
    reference = Image.open(sys.argv[1])
    candidate = Image.open(sys.argv[2])
    candidate.load()
    print(
        json.dumps(
            {
                "format": candidate.format,
                "width": candidate.size[0],
                "height": candidate.size[1],
                "mode": candidate.mode,
                **compare(reference, candidate),
            }
        )
    )


if __name__ == "__main__":
    main()
