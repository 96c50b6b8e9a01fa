"""Animated GIFs kept frame by frame (`animated=keep`) through the gateway,
next to libvips doing the same in-process in the same run (pyvips, one
thread, no operation cache): load every page (`n=-1`), thumbnail into the
box, save as animated WebP at quality 85 and effort 2 (libwebp's `method`,
the optimizer's setting). Our figure is the optimizer's stages from
Server-Timing (summed over the frames) and the whole upload; libvips draws
no watermark, so the comparison flatters it slightly.

The clips are camera pans over the 12 MP test photo, made here with libvips
(gifsave, 8-bit palette): what a screen recording or a meme GIF looks like
to a decoder. Called by benches/animation.sh."""

import argparse
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

os.environ["VIPS_CONCURRENCY"] = "1"
import pyvips  # noqa: E402  (reads VIPS_CONCURRENCY at import)

pyvips.cache_set_max(0)

RUNS = iter(range(1 << 30))
STAGES = ("decode", "resize", "watermark", "encode")


def panning_gif(photo: pathlib.Path, width: int, height: int, frames: int, out: pathlib.Path) -> None:
    # In memory: the crops read it out of order.
    source = pyvips.Image.thumbnail(str(photo), width * 2, height=height * 2).copy_memory()
    step = (source.width - width) // max(frames - 1, 1)
    pages = [source.crop(i * step, (source.height - height) // 2, width, height) for i in range(frames)]
    strip = pyvips.Image.arrayjoin(pages, across=1)
    strip = strip.copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", height)
    strip.set_type(pyvips.GValue.array_int_type, "delay", [80] * frames)
    strip.set_type(pyvips.GValue.gint_type, "loop", 0)
    strip.gifsave(str(out))


def upload(url: str, gif: pathlib.Path, box: tuple[int, int]) -> tuple[float, float, int]:
    text = f"NWS%20{next(RUNS)}"  # every run computes, none hits the cache
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-D", "-", "-w", "total=%{time_total} size=%{size_download}\n",
         "--data-binary", f"@{gif}", "-H", "Content-Type: application/octet-stream",
         f"{url}/v1/watermark?animated=keep&max_width={box[0]}&max_height={box[1]}&wm_text={text}"],
        check=True, capture_output=True, text=True,
    ).stdout
    stages = 0.0
    total = 0.0
    size = 0
    status = ""
    for line in out.splitlines():
        if line.lower().startswith("server-timing:"):
            for entry in line.split(":", 1)[1].split(","):
                name = entry.strip().split(";")[0]
                if name in STAGES and "dur=" in entry:
                    stages += float(entry.rsplit("dur=", 1)[1])
        if line.startswith("total="):
            parts = dict(part.split("=") for part in line.split())
            total = float(parts["total"]) * 1000
            size = int(parts["size"])
        if line.startswith("HTTP/"):
            status = line  # the last one is the answer (after 100 Continue)
    if " 200" not in status:
        raise SystemExit(f"upload failed: {status}")
    return stages, total, size


def vips(gif: pathlib.Path, box: tuple[int, int]) -> tuple[float, int]:
    started = time.perf_counter()
    thumb = pyvips.Image.thumbnail(f"{gif}[n=-1]", box[0], height=box[1], size="down")
    webp = thumb.webpsave_buffer(Q=85, effort=2, strip=True)
    return (time.perf_counter() - started) * 1000, len(webp)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--images", required=True, type=pathlib.Path)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    photo = args.images / "kleiber_4000x3000.jpg"
    cases = [
        # (canvas, frames, box): a short clip kept at its size, and an HD
        # clip fitted into a smaller box.
        ((480, 360), 24, (1920, 1080)),
        ((960, 540), 30, (640, 360)),
    ]
    print("| clip | frames | box → output | GIF bytes | optimizer stages (ms) | upload total (ms) | libvips (ms) | stages / libvips | our WebP bytes | libvips WebP bytes |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for (width, height), frames, box in cases:
            gif = pathlib.Path(tmp) / f"pan_{width}x{height}_{frames}.gif"
            panning_gif(photo, width, height, frames, gif)
            upload(args.gateway, gif, box)  # warm up
            ours = [upload(args.gateway, gif, box) for _ in range(args.runs)]
            theirs = [vips(gif, box) for _ in range(args.runs)]
            stages = statistics.median(run[0] for run in ours)
            total = statistics.median(run[1] for run in ours)
            peer = statistics.median(run[0] for run in theirs)
            scale = min(box[0] / width, box[1] / height, 1.0)
            output = f"{round(width * scale)}×{round(height * scale)}"
            print(f"| pan {width}×{height} | {frames} | {box[0]}×{box[1]} → {output} | {gif.stat().st_size:,} "
                  f"| {stages:.1f} | {total:.1f} | {peer:.1f} | {stages / peer:.2f}× "
                  f"| {ours[0][2]:,} | {theirs[0][1]:,} |")


if __name__ == "__main__":
    main()
