"""One row of benches/throughput.sh: images/s and peak RSS for `count`
images, `parallel` at a time, either uploaded to the mesh or made by libvips
(thumbnail 1920x1080 + JPEG Q85, one thread each, in separate processes so
that they run truly in parallel)."""

import argparse
import concurrent.futures
import os
import resource
import subprocess
import sys
import time
import urllib.request


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


RUNS = iter(range(1 << 30))


def upload(gateway: str, body: bytes) -> None:
    # A text of its own per upload (and per run of this script): every
    # upload computes, none hits the cache.
    url = f"{gateway}/v1/watermark?wm_text=NWS%20{os.getpid()}%20{next(RUNS)}"
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request) as response:
        response.read()


def mesh(args: argparse.Namespace) -> None:
    body = open(args.image, "rb").read()
    for _ in range(2 * args.parallel):
        upload(args.gateway, body)  # warm-up
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(lambda _: upload(args.gateway, body), range(args.count)))
    elapsed = time.perf_counter() - started
    print(f"| mesh, {args.parallel} worker(s) | {args.parallel} | {args.count / elapsed:.1f} "
          f"| {peak_rss_mib(args.pid):.0f} (whole mesh process) |")


VIPS_WORKER = """
import os, sys
os.environ["VIPS_CONCURRENCY"] = "1"
import pyvips
pyvips.cache_set_max(0)
for _ in range(int(sys.argv[2])):
    pyvips.Image.thumbnail(sys.argv[1], 1920, height=1080, size="down").write_to_buffer(".jpg[Q=85,strip]")
"""


def vips(args: argparse.Namespace) -> None:
    share = args.count // args.parallel
    subprocess.run([sys.executable, "-c", VIPS_WORKER, args.image, "2"], check=True)  # warm-up
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-c", VIPS_WORKER, args.image, str(share)])
               for _ in range(args.parallel)]
    for worker in workers:
        worker.wait()
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"| libvips, {args.parallel} process(es) of 1 thread | {args.parallel} "
          f"| {share * args.parallel / elapsed:.1f} | {peak:.0f} (largest process) |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["mesh", "vips"])
    parser.add_argument("--gateway")
    parser.add_argument("--image", required=True)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--pid", type=int)
    args = parser.parse_args()
    (mesh if args.what == "mesh" else vips)(args)


if __name__ == "__main__":
    main()
