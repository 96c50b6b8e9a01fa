"""Misses through the gateway deployed apart from its upstreams: per-miss
wall time seen by the client, and CPU time and peak memory of each process.
Used by benches/miss_path.sh."""

import argparse
import statistics
import time
import urllib.request

from throughput import peak_rss_mib

RUNS = iter(range(1 << 30))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100.0


def upload(gateway: str, body: bytes, label: str) -> float:
    # A text of its own per upload: every one misses every tier.
    url = f"{gateway}/v1/watermark?format=jpeg&wm_text=miss%20{next(RUNS)}%20{time.time_ns()}"
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    started = time.perf_counter()
    with urllib.request.urlopen(request) as response:
        response.read()
        assert response.headers["X-Cache"] == "MISS", response.headers["X-Cache"]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--label", required=True)
    parser.add_argument("--pids", required=True, help="gateway,optimizer,storage")
    args = parser.parse_args()
    pids = dict(zip(["gateway", "optimizer", "storage"], map(int, args.pids.split(","))))
    body = open(args.image, "rb").read()
    for _ in range(3):
        upload(args.gateway, body, args.label)  # warm-up
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    times = [upload(args.gateway, body, args.label) for _ in range(args.count)]
    cpu = {name: (cpu_seconds(pid) - cpu_before[name]) * 1000 / args.count for name, pid in pids.items()}
    times.sort()
    print(f"| {args.label} | {statistics.median(times) * 1000:.1f} | {times[int(len(times) * 0.9)] * 1000:.1f} "
          f"| {cpu['gateway']:.1f} | {cpu['optimizer']:.1f} | {cpu['storage']:.1f} "
          f"| {sum(cpu.values()):.1f} | {peak_rss_mib(pids['gateway']):.0f} |")


if __name__ == "__main__":
    main()
