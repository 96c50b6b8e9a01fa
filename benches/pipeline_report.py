"""Times every test photo through the gateway (Server-Timing gives the
optimizer's stages) and through libvips' `vips thumbnail` (one thread), and
prints medians as a Markdown table. Called by benches/pipeline.sh."""

import argparse
import os
import pathlib
import statistics
import subprocess
import tempfile
import time


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


def vips(image: pathlib.Path, out: pathlib.Path) -> float:
    env = dict(os.environ, VIPS_CONCURRENCY="1")
    started = time.perf_counter()
    subprocess.run(["vips", "thumbnail", str(image), f"{out}[Q=85,strip]", "1920", "--height", "1080"],
                   check=True, env=env)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--images", required=True, type=pathlib.Path)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    print(f"| image | decode | resize | watermark | encode | upload total (HTTP) | `vips thumbnail` (1 thread) | total / vips |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for image in sorted(args.images.glob("*.*")):
            if image.suffix.lower() not in (".jpg", ".png"):
                continue
            upload(args.gateway, image)  # warm-up
            runs = [upload(args.gateway, image) for _ in range(args.runs)]
            vips(image, pathlib.Path(tmp) / "out.jpg")  # warm-up
            vips_ms = statistics.median(vips(image, pathlib.Path(tmp) / "out.jpg") for _ in range(args.runs))
            med = lambda key: statistics.median(r[1][key] for r in runs)
            total = statistics.median(r[0] for r in runs)
            print(f"| {image.name} | {med('decode'):.1f} | {med('resize'):.1f} | {med('watermark'):.2f} | "
                  f"{med('encode'):.1f} | {total:.1f} | {vips_ms:.1f} | {total / vips_ms:.2f}× |")


if __name__ == "__main__":
    main()
