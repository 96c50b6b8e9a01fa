"""What a Bloom filter in front of Redis could save: the time of an L2 miss
next to the whole request it is part of, from the gateway's own
Server-Timing, over uploads that all miss (each has its own text).

    python3 benches/l2_miss.py --gateway http://127.0.0.1:3000 --image photo.jpg --count 200
"""

import argparse
import statistics
import urllib.request


def timings(gateway: str, body: bytes, n: int) -> dict[str, float]:
    url = f"{gateway}/v1/watermark?format=jpeg&wm_text=miss%20{n}"
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request) as response:
        response.read()
        assert response.headers["x-cache"] == "MISS", response.headers["x-cache"]
        entries = response.headers["server-timing"].split(",")
    return {e.strip().split(";")[0]: float(e.rsplit("dur=", 1)[1]) for e in entries}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    body = open(args.image, "rb").read()
    for n in range(5):
        timings(args.gateway, body, -1 - n)  # warm-up
    runs = [timings(args.gateway, body, n) for n in range(args.count)]
    median = {name: statistics.median(run[name] for run in runs) for name in ("l2", "store", "total")}
    print(f"| {args.image.rsplit('/', 1)[-1]} | {median['l2']:.3f} | {median['store']:.3f} | "
          f"{median['total']:.2f} | {100 * median['l2'] / median['total']:.2f}% |")


if __name__ == "__main__":
    main()
