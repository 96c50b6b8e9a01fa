"""Soak: many mixed uploads through the release mesh (every test photo,
several output formats and sizes, and bad inputs: a text file, a truncated
JPEG, a PNG cut short), with the RSS of each process sampled throughout.
After warm-up the curve must be flat: the mean RSS of the last tenth of the
uploads within 10% of the second tenth's, per process. Prints a Markdown
table of tenths; the raw samples go to a CSV (with the uploads done so far
on every row). Exits 1 when a process' curve is not flat.

    python3 benches/soak.py --bin-dir target/release [--uploads 10000] [--separate]
"""

import argparse
import csv
import pathlib
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import memory
from memory import MIB, Sampler, Services, images, rss, upload

FLAT_WITHIN = 0.10
ANIMATED_GIF = pathlib.Path(__file__).parent.parent / "optimizer-svc/tests/data/kleiber_pan_240x180_10f.gif"


def gif_bomb(frames: int, side: int) -> bytes:
    """`frames` one-pixel frames (15 bytes each) on a `side`×`side` canvas:
    refused from its blocks before a frame is decoded."""
    header = b"GIF89a" + side.to_bytes(2, "little") * 2 + bytes([0, 0, 0])
    frame = bytes([0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0xFF, 0xFF, 0])
    return header + frame * frames + b"\x3b"


def workload(photos: list[pathlib.Path]) -> list[tuple[str, bytes, dict[str, str], set[int]]]:
    """(name, body, options, statuses it may get) of one round: each photo in
    each output format, some at other sizes, and bad inputs. Any upload may
    also be turned away while the optimizer's line is full (503)."""
    busy = {503}
    round_ = []
    for photo in photos:
        body = photo.read_bytes()
        # The default box (1920×1080) in the default format, the others in
        # smaller boxes: the mix stays under half an hour on two cores.
        round_ += [
            (f"{photo.name} auto", body, {}, {200} | busy),
            (f"{photo.name} jpeg 1024", body, {"format": "jpeg", "max_width": "1024", "max_height": "1024"},
             {200} | busy),
            (f"{photo.name} webp 1024", body, {"format": "webp", "max_width": "1024", "max_height": "1024"},
             {200} | busy),
            (f"{photo.name} png 800", body, {"format": "png", "max_width": "800", "max_height": "800"},
             {200} | busy),
            (f"{photo.name} jpeg 800 tiled", body,
             {"format": "jpeg", "max_width": "800", "resize": "fast", "wm_tiled": "true"}, {200} | busy),
            # AV1 is the slowest encoder: small.
            (f"{photo.name} avif 480", body, {"format": "avif", "max_width": "480", "max_height": "480"},
             {200} | busy),
        ]
    jpeg = next(p for p in photos if p.name.startswith("kleiber")).read_bytes()
    png = next(p for p in photos if p.suffix == ".png").read_bytes()
    gif = ANIMATED_GIF.read_bytes()
    round_ += [
        ("animated GIF, every frame", gif, {"animated": "keep"}, {200} | busy),
        ("animated GIF, first frame", gif, {}, {200} | busy),
        ("animation bomb", gif_bomb(10_000, 1000), {"animated": "keep"}, {400} | busy),
        ("text file", b"this is not an image, whatever its name says\n" * 40, {}, {415} | busy),
        ("truncated JPEG", jpeg[: len(jpeg) // 2], {}, {400, 422} | busy),
        ("truncated PNG", png[: len(png) // 3], {}, {400, 422} | busy),
    ]
    return round_


def tenths(sampler: Sampler, marks: list[tuple[float, int]], total: int, name: str) -> list[dict]:
    """Mean and peak RSS of one process over each tenth of the uploads."""
    bounds = []
    for tenth in range(10):
        first, last = total * tenth // 10, total * (tenth + 1) // 10
        since = next(t for t, done in marks if done >= first)
        until = next((t for t, done in marks if done >= last), marks[-1][0])
        values = [v for t, p, v in sampler.samples if p == name and since <= t <= until]
        bounds.append({"uploads": f"{first + 1}–{last}", "mean": sum(values) / max(len(values), 1),
                       "peak": max(values, default=0)})
    return bounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True, type=pathlib.Path)
    parser.add_argument("--images", type=pathlib.Path, default=pathlib.Path("../shared/testdata/images"))
    parser.add_argument("--uploads", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--csv", type=pathlib.Path, default=pathlib.Path("/tmp/nws-soak.csv"))
    parser.add_argument("--separate", action="store_true", help="the three services as processes")
    parser.add_argument("--label", default="as built", help="the allocator's name in the report")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--preload", help="an allocator to LD_PRELOAD into the services")
    args = parser.parse_args()

    round_ = workload(images(args.images))
    order = random.Random(args.seed)
    plan = [round_[i % len(round_)] for i in range(args.uploads)]
    order.shuffle(plan)

    done = 0
    done_lock = threading.Lock()
    unexpected: dict[tuple[str, int], int] = {}
    statuses: dict[int, int] = {}
    marks: list[tuple[float, int]] = []

    with Services(args.bin_dir, separate=args.separate, preload=args.preload) as mesh, args.csv.open("w", newline="") as sink:
        writer = csv.writer(sink)
        writer.writerow(["run", "phase", "seconds", "process", "rss_bytes", "progress"])
        start = {name: rss(pid) for name, pid in mesh.pids.items()}
        sampler = Sampler(mesh.pids, writer, "soak", every=args.every, progress=lambda: done)
        marks.append((sampler.now(), 0))
        began = time.monotonic()

        def one(item) -> None:
            nonlocal done
            name, body, options, expected = item
            status = upload(mesh.url, body, options)
            with done_lock:
                done += 1
                marks.append((sampler.now(), done))
                statuses[status] = statuses.get(status, 0) + 1
                if status not in expected:
                    unexpected[(name, status)] = unexpected.get((name, status), 0) + 1
                if done % 500 == 0:
                    now = {n: rss(pid) // MIB for n, pid in mesh.pids.items()}
                    print(f"  {done}/{args.uploads} uploads, {time.monotonic() - began:.0f} s, "
                          f"RSS MiB {now}", file=sys.stderr, flush=True)

        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, plan))
        elapsed = time.monotonic() - began
        sampler.phase = "idle"
        time.sleep(10)
        idle = {name: rss(pid) for name, pid in mesh.pids.items()}
        sampler.stop()
        curves = {name: tenths(sampler, marks, args.uploads, name) for name in mesh.pids}

    where = "three processes" if args.separate else "nws-mesh"
    print(f"Soak: {args.uploads} uploads ({len(round_)} kinds in a seeded shuffle: every photo as "
          f"auto in 1920×1080, JPEG and WebP in 1024×1024, PNG in 800×800, JPEG 800 px tiled, AVIF in "
          f"480×480; an animated GIF kept and as a still; a text file, a truncated JPEG, a truncated PNG and a GIF bomb), {args.concurrency} at once, "
          f"{where}, L1 off, allocator: {args.label}; "
          f"{elapsed:.0f} s. HTTP statuses: "
          + ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
          + f" ({memory.busy_answers} answers 503, line full, retried after their Retry-After; "
          f"{memory.broken_connections} connections broken while sending, retried).")
    if unexpected:
        print("Unexpected statuses: " + ", ".join(f"{n} × {name} → {code}"
                                                  for (name, code), n in sorted(unexpected.items())))
    print()
    names = list(curves)
    print("| uploads | " + " | ".join(f"{n} mean RSS | {n} peak" for n in names) + " |")
    print("|---|" + "---:|---:|" * len(names))
    print("| start (idle) | " + " | ".join(f"{start[n] / MIB:.0f} | –" for n in names) + " |")
    for tenth in range(10):
        print(f"| {curves[names[0]][tenth]['uploads']} | " + " | ".join(
            f"{curves[n][tenth]['mean'] / MIB:.0f} | {curves[n][tenth]['peak'] / MIB:.0f}" for n in names) + " |")
    print("| after 10 s idle | " + " | ".join(f"{idle[n] / MIB:.0f} | –" for n in names) + " |")
    print()
    flat = True
    for name in names:
        second, last = curves[name][1]["mean"], curves[name][9]["mean"]
        change = (last - second) / second
        ok = abs(change) <= FLAT_WITHIN
        flat &= ok
        print(f"- {name}: last tenth {last / MIB:.0f} MiB vs second tenth {second / MIB:.0f} MiB "
              f"({change:+.1%}): {'flat' if ok else 'NOT flat'} (within ±{FLAT_WITHIN:.0%})")
    print(f"\nRaw samples: {args.csv}")
    sys.exit(0 if flat else 1)


if __name__ == "__main__":
    main()
