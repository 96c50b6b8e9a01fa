"""One row of benches/overload.sh: `concurrency` clients upload the 12 MP
photo to the mesh, each upload with a `wm_text` of its own (every upload
computes, none hits the cache): `count` uploads, none started after
`seconds`. A refused upload (429 or 503) is retried: after its Retry-After
when it has one, else after one second, as a polite client would, unless
that is past the time limit (then it is abandoned); every refusal is
counted, by status and by whether it said when to retry."""

import argparse
import collections
import concurrent.futures
import itertools
import json
import os
import statistics
import threading
import time
import urllib.error
import urllib.request

# Without a Retry-After, a refused client waits this long before trying again.
BACKOFF_SECONDS = 1.0


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.body = open(args.image, "rb").read()
        self.lock = threading.Lock()
        self.started = itertools.count()
        self.served = 0
        self.latencies = []  # the attempt that was served, seconds
        self.end_to_end = []  # from the first attempt, retries and waits included
        self.refusals = collections.Counter()  # (status, has Retry-After)
        self.retry_after = []  # seconds asked for
        self.errors = collections.Counter()
        self.abandoned = 0
        self.deadline = 0.0

    def attempt(self, url: str) -> tuple[int, str | None]:
        request = urllib.request.Request(url, data=self.body, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                response.read()
                return response.status, None
        except urllib.error.HTTPError as error:
            error.read()
            return error.code, error.headers.get("Retry-After")

    def upload(self, index: int) -> None:
        url = (f"{self.args.gateway}/v1/watermark"
               f"?wm_text=overload%20{os.getpid()}%20{self.args.concurrency}%20{index}")
        first = time.perf_counter()
        while True:
            started = time.perf_counter()
            try:
                status, retry_after = self.attempt(url)
            except OSError as error:
                # urllib wraps the cause (a reset connection, say) in URLError.
                cause = getattr(error, "reason", error)
                with self.lock:
                    self.errors[type(cause).__name__ if isinstance(cause, BaseException) else str(cause)] += 1
                return
            done = time.perf_counter()
            if status == 200:
                with self.lock:
                    self.served += 1
                    self.latencies.append(done - started)
                    self.end_to_end.append(done - first)
                return
            if status not in (429, 503):
                with self.lock:
                    self.errors[str(status)] += 1
                return
            with self.lock:
                self.refusals[(status, retry_after is not None)] += 1
                if retry_after is not None:
                    self.retry_after.append(float(retry_after))
            wait = float(retry_after) if retry_after is not None else BACKOFF_SECONDS
            if done + wait > self.deadline:
                with self.lock:
                    self.abandoned += 1
                return
            time.sleep(wait)

    def client(self) -> None:
        while time.perf_counter() < self.deadline:
            index = next(self.started)
            if index >= self.args.count:
                return
            self.upload(index)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


def optimizer_refusals(admin: str | None) -> str:
    if not admin:
        return ""
    text = urllib.request.urlopen(f"{admin}/metrics").read().decode()
    counts = collections.Counter()
    for line in text.splitlines():
        if line.startswith("nws_optimizer_refused_calls_total{"):
            labels, value = line.rsplit(" ", 1)
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] += float(value)
    return ", ".join(f"{reason} {int(n)}" for reason, n in sorted(counts.items()) if n) or "none"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--admin", help="the mesh's admin listener, for the optimizer's own counts")
    parser.add_argument("--image", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--count", type=int, default=120, help="uploads")
    parser.add_argument("--seconds", type=float, default=60, help="time to start and retry uploads in")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = parser.parse_args()

    run = Run(args)
    run.deadline = time.perf_counter() + 3600
    for index in range(2):
        run.upload(-1 - index)  # warm-up: the optimizer measures its service time
    run = Run(args)
    began = time.perf_counter()
    run.deadline = began + args.seconds
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        for future in [pool.submit(run.client) for _ in range(args.concurrency)]:
            future.result()
    elapsed = time.perf_counter() - began

    def refused(status: int) -> str:
        with_hint = run.refusals[(status, True)]
        without = run.refusals[(status, False)]
        return f"{with_hint} / {without}"

    asked = (f"{statistics.median(run.retry_after):.0f} s" if run.retry_after else "–")
    errors = ", ".join(f"{k} {v}" for k, v in sorted(run.errors.items())) or "0"
    print(f"| {args.concurrency} | {run.served} | {run.served / elapsed:.2f} "
          f"| {refused(503)} | {refused(429)} | {asked} | {run.abandoned} | {errors} "
          f"| {percentile(run.latencies, 0.5):.2f} | {percentile(run.latencies, 0.95):.2f} "
          f"| {percentile(run.end_to_end, 0.95):.2f} | {optimizer_refusals(args.admin)} |")
    if args.json:
        print(json.dumps({
            "concurrency": args.concurrency, "served": run.served, "elapsed": elapsed,
            "refusals": {f"{s} retry-after={h}": n for (s, h), n in run.refusals.items()},
            "errors": dict(run.errors), "abandoned": run.abandoned,
            "latencies": run.latencies, "end_to_end": run.end_to_end,
        }))


if __name__ == "__main__":
    main()
