"""Times every test photo through the gateway (Server-Timing gives the
optimizer's stages), through libvips in-process (pyvips, one thread, no
operation cache: thumbnail with shrink-on-load, then JPEG Q85 without
metadata), and, for JPEGs, the libjpeg-turbo floor: `djpeg -scale 1/N` at
the same shrink-on-load scale plus `cjpeg -quality 85` of an image the size
of the output. Prints medians as a Markdown table, each photo's time as a
ratio to libvips'.

Then the output formats: whole uploads of the 12 MP photo as JPEG, WebP and
AVIF (default quality), their medians and ratios to the JPEG upload, and
the SSIM of each output against the lossless (PNG) render of the same
request, computed by libvips (luma, Gaussian windows σ = 1.5, the usual
SSIM constants). Called by benches/pipeline.sh, which runs it with pyvips
installed."""

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


def upload(url: str, image: pathlib.Path, query: str = "format=auto", text: str | None = None,
           output: str = "/dev/null") -> tuple[float, dict[str, float], tuple[int, int]]:
    # A text of its own per upload: every run computes, none hits the cache.
    text = text or f"NWS%20{next(RUNS)}"
    out = subprocess.run(
        ["curl", "-sS", "-o", output, "-D", "-", "-w", "total=%{time_total}\n",
         "--data-binary", f"@{image}", "-H", "Content-Type: application/octet-stream",
         f"{url}/v1/watermark?{query}&wm_text={text}"],
        check=True, capture_output=True, text=True,
    ).stdout
    stages: dict[str, float] = {}
    total = 0.0
    size = [0, 0]
    for line in out.splitlines():
        lower = line.lower()
        if lower.startswith("x-image-width:"):
            size[0] = int(line.split(":", 1)[1])
        if lower.startswith("x-image-height:"):
            size[1] = int(line.split(":", 1)[1])
        if line.lower().startswith("server-timing:"):
            for entry in line.split(":", 1)[1].split(","):
                name = entry.strip().split(";")[0]
                # The optimizer's stages; the gateway's own entries (trace,
                # upload, cache tiers, total) are not part of them.
                if name in STAGES and "dur=" in entry:
                    stages[name] = float(entry.rsplit("dur=", 1)[1])
        if line.startswith("total="):
            total = float(line[6:]) * 1000
    return total, stages, (size[0], size[1])


def vips(image: pathlib.Path) -> float:
    started = time.perf_counter()
    thumb = pyvips.Image.thumbnail(str(image), 1920, height=1080, size="down")
    suffix = ".png" if thumb.hasalpha() else ".jpg[Q=85,strip]"
    thumb.write_to_buffer(suffix)
    return (time.perf_counter() - started) * 1000


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def floor(image: pathlib.Path, output: tuple[int, int], runs: int) -> float | None:
    """libjpeg-turbo alone: decode at the shrink-on-load scale the output
    allows, then encode an image of the output's size."""
    if image.suffix.lower() != ".jpg":
        return None
    source = pyvips.Image.new_from_file(str(image))
    width, height = output
    if source.get_typeof("orientation") and source.get("orientation") in (5, 6, 7, 8):
        width, height = height, width
    # The smallest M/8 whose size (rounded up, as libjpeg does) covers the
    # output: the scale the optimizer decodes at.
    eighths = next(m for m in range(1, 9)
                   if -(-source.width * m // 8) >= width and -(-source.height * m // 8) >= height)
    decode = ["djpeg", "-scale", f"{eighths}/8", "-outfile", "/dev/null", str(image)]
    with tempfile.NamedTemporaryFile(suffix=".ppm") as ppm:
        pyvips.Image.thumbnail(str(image), output[0], height=output[1]).write_to_file(ppm.name)
        encode = ["cjpeg", "-quality", "85", "-outfile", "/dev/null", ppm.name]
        timed(decode), timed(encode)  # warm-up
        return (statistics.median(timed(decode) for _ in range(runs))
                + statistics.median(timed(encode) for _ in range(runs)))


def ssim(reference: str, other: str) -> float:
    """Mean SSIM of the luma of two images of the same size."""
    def luma(path: str) -> pyvips.Image:
        image = pyvips.Image.new_from_file(path, access="sequential")
        if image.hasalpha():
            image = image.flatten(background=[255, 255, 255])
        return image.colourspace("b-w")[0].cast("double").copy_memory()
    x, y = luma(reference), luma(other)
    blur = lambda image: image.gaussblur(1.5, precision="float")
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index.avg()


def formats(url: str, image: pathlib.Path, runs: int) -> None:
    """Whole uploads of one photo per output format, against JPEG's."""
    print()
    print(f"Uploads of {image.name} by output format (default quality; medians of {runs}):")
    print()
    print("| output | upload total (HTTP) | encode stage | vs JPEG upload | bytes | SSIM vs lossless |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        reference = f"{work}/reference.png"
        upload(url, image, "format=png", "NWS%20quality", reference)
        jpeg_total = None
        for name in ("jpeg", "webp", "avif"):
            upload(url, image, f"format={name}")  # warm-up
            timed_runs = [upload(url, image, f"format={name}") for _ in range(runs)]
            total = statistics.median(r[0] for r in timed_runs)
            encode = statistics.median(r[1].get("encode", 0.0) for r in timed_runs)
            jpeg_total = jpeg_total or total
            output = f"{work}/output.{name}"
            upload(url, image, f"format={name}", "NWS%20quality", output)
            quality = ssim(reference, output)
            print(f"| {name.upper()} | {total:.1f} ms | {encode:.1f} ms | {total / jpeg_total:.2f}× "
                  f"| {os.path.getsize(output):,} | {quality:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--images", required=True, type=pathlib.Path)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--formats-image", default="kleiber_4000x3000.jpg")
    args = parser.parse_args()
    print("| image | decode | resize | watermark | encode | optimizer stages | upload total (HTTP) "
          "| libvips thumbnail + encode | stages / libvips | libjpeg-turbo floor | stages / floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for image in sorted(args.images.glob("*.*")):
        if image.suffix.lower() not in (".jpg", ".png"):
            continue
        upload(args.gateway, image)  # warm-up
        runs = [upload(args.gateway, image) for _ in range(args.runs)]
        vips(image)  # warm-up
        vips_ms = statistics.median(vips(image) for _ in range(args.runs))
        med = lambda key: statistics.median(r[1][key] for r in runs)
        stages = statistics.median(sum(r[1].values()) for r in runs)
        total = statistics.median(r[0] for r in runs)
        floor_ms = floor(image, runs[0][2], args.runs)
        floor_cells = f"{floor_ms:.1f} | {stages / floor_ms:.2f}×" if floor_ms else "– | –"
        print(f"| {image.name} | {med('decode'):.1f} | {med('resize'):.1f} | {med('watermark'):.2f} | "
              f"{med('encode'):.1f} | {stages:.1f} | {total:.1f} | {vips_ms:.1f} | {stages / vips_ms:.2f}× "
              f"| {floor_cells} |")
    formats(args.gateway, args.images / args.formats_image, args.runs)


if __name__ == "__main__":
    main()
