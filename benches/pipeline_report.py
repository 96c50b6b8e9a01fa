"""Times every test photo through the gateway (Server-Timing gives the
optimizer's stages) and through libvips in-process (pyvips, one thread, no
operation cache: thumbnail with shrink-on-load, then JPEG Q85 without
metadata), and prints medians as a Markdown table. Called by
benches/pipeline.sh, which runs it with pyvips installed."""

import argparse
import os
import pathlib
import statistics
import subprocess
import time

os.environ["VIPS_CONCURRENCY"] = "1"
import pyvips  # noqa: E402  (reads VIPS_CONCURRENCY at import)

pyvips.cache_set_max(0)


def upload(url: str, image: pathlib.Path) -> tuple[float, dict[str, float]]:
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-D", "-", "-w", "total=%{time_total}\n",
         "--data-binary", f"@{image}", "-H", "Content-Type: application/octet-stream", f"{url}/v1/watermark"],
        check=True, capture_output=True, text=True,
    ).stdout
    stages: dict[str, float] = {}
    total = 0.0
    for line in out.splitlines():
        if line.lower().startswith("server-timing:"):
            for entry in line.split(":", 1)[1].split(","):
                name, dur = entry.strip().split(";dur=")
                stages[name] = float(dur)
        if line.startswith("total="):
            total = float(line[6:]) * 1000
    return total, stages


def vips(image: pathlib.Path) -> float:
    started = time.perf_counter()
    thumb = pyvips.Image.thumbnail(str(image), 1920, height=1080)
    suffix = ".png" if thumb.hasalpha() else ".jpg[Q=85,strip]"
    thumb.write_to_buffer(suffix)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--images", required=True, type=pathlib.Path)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print("| image | decode | resize | watermark | encode | optimizer stages | upload total (HTTP) "
          "| libvips thumbnail + encode | stages / libvips |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
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
        print(f"| {image.name} | {med('decode'):.1f} | {med('resize'):.1f} | {med('watermark'):.2f} | "
              f"{med('encode'):.1f} | {stages:.1f} | {total:.1f} | {vips_ms:.1f} | {stages / vips_ms:.2f}× |")


if __name__ == "__main__":
    main()
