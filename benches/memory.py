"""Resident memory of the release mesh under uploads: per test photo (a
fresh mesh each, N sequential uploads), then a mixed stream of every photo
at C concurrent uploads, then idle. RSS is sampled from /proc/PID/status
every ~20 ms, and the kernel's own high-water mark (VmHWM, reset through
/proc/PID/clear_refs at the start of each phase) catches a peak between
two samples. Prints Markdown tables; the raw samples go to a CSV.

Also imported by benches/soak.py for starting meshes and sampling them.

    python3 benches/memory.py --bin-dir target/release [--images DIR] [--csv FILE]
"""

import argparse
import csv
import http.client
import itertools
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

MIB = 1 << 20
SAMPLE_EVERY = 0.02


# ---------------------------------------------------------------- processes


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes (empty once it is gone)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, amount, _unit = line.split()
                    values[name[:-1]] = int(amount) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def rss(pid: int) -> int:
    return _status(pid).get("VmRSS", 0)


def high_water(pid: int) -> int:
    return _status(pid).get("VmHWM", 0)


def reset_high_water(pid: int) -> None:
    """VmHWM back to the current RSS (Linux ≥ 4.0, same user or root)."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")


class Services:
    """The mesh in one process (`nws-mesh`) or its three services apart
    (`storage-svc`, `optimizer-svc`, `gateway`), on loopback ports the
    kernel picks, with the edge's rate limits off (one load generator is
    one caller) and the L1 memory cache off unless `env` says otherwise."""

    def __init__(self, bin_dir: pathlib.Path, env: dict[str, str] | None = None,
                 separate: bool = False, preload: str | None = None):
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="nws-memory-"))
        self.processes: dict[str, subprocess.Popen] = {}
        self.base_env = dict(os.environ)
        self.base_env.update({
            "NWS_RATE_LIMIT_RPS": "0", "NWS_READ_RATE_LIMIT_RPS": "0",
            "NWS_CACHE_MEMORY": "0", "NWS_LOG_FORMAT": "json",
            "RUST_LOG": "warn,nws_runtime=info", "NWS_ADMIN_ADDR": "127.0.0.1:0",
            "NWS_DATA_DIR": str(self.work / "data"),
            "NWS_HTTP_ADDR": "127.0.0.1:0", "NWS_OPTIMIZER_ADDR": "127.0.0.1:0",
            "NWS_STORAGE_ADDR": "127.0.0.1:0",
        })
        if preload:
            self.base_env["LD_PRELOAD"] = preload
        self.base_env.update(env or {})
        try:
            if separate:
                storage = self._start(bin_dir / "storage-svc", "storage", "storage")
                optimizer = self._start(bin_dir / "optimizer-svc", "optimizer", "optimizer",
                                        NWS_STORAGE_URL=f"http://{storage}")
                self.url = "http://" + self._start(
                    bin_dir / "gateway", "gateway", "gateway",
                    NWS_OPTIMIZER_URL=f"http://{optimizer}", NWS_STORAGE_URL=f"http://{storage}")
            else:
                self.url = "http://" + self._start(bin_dir / "nws-mesh", "mesh", "gateway")
        except BaseException:
            self.stop()
            raise

    def _start(self, binary: pathlib.Path, name: str, service: str, **env: str) -> str:
        log = self.work / f"{name}.log"
        self.processes[name] = subprocess.Popen(
            [str(binary)], env={**self.base_env, **env},
            stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        pattern = re.compile(rf'"service":"{service}","addr":"([^"]+)"')
        for _ in range(300):
            found = pattern.search(log.read_text(errors="replace"))
            if found:
                return found.group(1)
            if self.processes[name].poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{binary.name} did not report its address: {log.read_text()[-2000:]}")

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()


class Sampler:
    """RSS of each process every SAMPLE_EVERY seconds, in a thread; every
    sample is kept (and written to `writer`, a csv.writer, when given)."""

    def __init__(self, pids: dict[str, int], writer=None, label: str = "",
                 every: float = SAMPLE_EVERY, progress=lambda: ""):
        self.pids = pids
        self.writer = writer
        self.label = label
        self.every = every
        self.progress = progress
        self.samples: list[tuple[float, str, int]] = []
        self.started = time.monotonic()
        self.phase = "load"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic() - self.started
            done = self.progress()
            for name, pid in self.pids.items():
                value = rss(pid)
                self.samples.append((now, name, value))
                if self.writer:
                    self.writer.writerow([self.label, self.phase, f"{now:.3f}", name, value, done])
            self._stop.wait(self.every)

    def now(self) -> float:
        return time.monotonic() - self.started

    def peak(self, since: float, until: float | None = None, name: str | None = None) -> int:
        """Largest sampled RSS in a window: of one process, or of the
        processes' sum at each sampling instant."""
        until = float("inf") if until is None else until
        totals: dict[float, int] = {}
        for t, process, value in list(self.samples):
            if since <= t <= until and (name is None or process == name):
                totals[t] = totals.get(t, 0) + value
        return max(totals.values(), default=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- uploads

_serial = itertools.count()
_local = threading.local()


def upload(url: str, body: bytes, params: dict[str, str] | None = None, busy_retries: int = 30) -> int:
    """One raw-body upload to POST /v1/watermark, on a keep-alive connection
    of this thread; returns the HTTP status. The watermark text is unique
    per call unless given, so every upload renders (no cached result). A
    503 (the optimizer's line is full) is retried after its Retry-After
    (at most a second), so every upload is rendered in the end."""
    global busy_answers
    parsed = urllib.parse.urlsplit(url)
    query = {"wm_text": f"NWS {os.getpid()}-{next(_serial)}"}
    query.update(params or {})
    path = "/v1/watermark?" + urllib.parse.urlencode(query)
    for _ in range(busy_retries + 1):
        status, retry_after = _post(parsed, path, body)
        if status != 503:
            break
        busy_answers += 1
        time.sleep(min(retry_after, 1.0))
    return status


busy_answers = 0


def _post(parsed: urllib.parse.SplitResult, path: str, body: bytes) -> tuple[int, float]:
    """(status, Retry-After) of one POST. A connection that breaks while the
    body is sent (a keep-alive one the server closed meanwhile, or a refusal
    answered before the body was read, with `Connection: close`) is retried
    on a new one, after a pause."""
    for attempt in range(CONNECTION_RETRIES + 1):
        connection = getattr(_local, "connections", {}).get(parsed.netloc)
        if connection is None:
            connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)
            _local.__dict__.setdefault("connections", {})[parsed.netloc] = connection
        try:
            connection.request("POST", path, body=body,
                               headers={"Content-Type": "application/octet-stream"})
            response = connection.getresponse()
            response.read()
            if response.getheader("Connection", "").lower() == "close":
                connection.close()
                _local.connections.pop(parsed.netloc, None)
            return response.status, float(response.getheader("Retry-After", "0.2") or 0.2)
        except (http.client.HTTPException, ConnectionError, OSError):
            connection.close()
            _local.connections.pop(parsed.netloc, None)
            if attempt == CONNECTION_RETRIES:
                raise
            global broken_connections
            broken_connections += 1
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


CONNECTION_RETRIES = 10
broken_connections = 0


def images(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def rgba_bytes(image: pathlib.Path) -> int:
    """Width × height × 4 from the file's header (JPEG SOF or PNG IHDR)."""
    data = image.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return width * height * 4
    at = 2
    while at + 9 < len(data):
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height = int.from_bytes(data[at + 5:at + 7], "big")
            width = int.from_bytes(data[at + 7:at + 9], "big")
            return width * height * 4
        at += 2 + length
    raise ValueError(f"no frame header in {image}")


def settle(pids: dict[str, int], seconds: float = 1.0) -> int:
    """Total RSS once the processes are idle for `seconds`."""
    time.sleep(seconds)
    return sum(rss(pid) for pid in pids.values())


# ---------------------------------------------------------------- phases


def mib(value: float) -> str:
    return f"{value / MIB:.0f}"


def per_photo(args, writer) -> list[dict]:
    rows = []
    for image in images(args.images):
        if args.photos and not any(part in image.name for part in args.photos):
            continue
        body = image.read_bytes()
        with Services(args.bin_dir, preload=args.preload, separate=args.separate) as mesh:
            start = settle(mesh.pids)
            sampler = Sampler(mesh.pids, writer, f"photo:{image.name}")
            for pid in mesh.pids.values():
                reset_high_water(pid)
            since = sampler.now()
            statuses, times = [], []
            for _ in range(args.runs):
                began = time.monotonic()
                statuses.append(upload(mesh.url, body))
                times.append(time.monotonic() - began)
            until = sampler.now()
            hwm = sum(high_water(pid) for pid in mesh.pids.values())
            sampled = sampler.peak(since, until)
            sampler.phase = "idle"
            after_2 = settle(mesh.pids, 2)
            after_10 = settle(mesh.pids, args.idle - 2)
            sampler.stop()
        ok = sum(1 for s in statuses if s == 200)
        rgba = rgba_bytes(image)
        target = 4 * rgba + 32 * MIB
        peak = max(hwm, sampled)
        rows.append({
            "image": image.name, "ok": ok, "runs": len(statuses), "start": start, "peak": peak,
            "sampled": sampled, "rgba": rgba, "target": target, "after_2": after_2,
            "after_10": after_10, "median_ms": statistics.median(times) * 1000,
        })
        print(f"  {image.name}: start {mib(start)} peak {mib(peak)} (sampled {mib(sampled)}) "
              f"idle 2 s {mib(after_2)} idle {args.idle} s {mib(after_10)} MiB, {ok}/{len(statuses)} ok, "
              f"median {rows[-1]['median_ms']:.0f} ms",
              flush=True)
    return rows


def mixed(args, writer) -> dict:
    photos = [p.read_bytes() for p in images(args.images)]
    bodies = [photos[i % len(photos)] for i in range(args.mixed)]
    with Services(args.bin_dir, preload=args.preload, separate=args.separate) as mesh:
        start = settle(mesh.pids)
        sampler = Sampler(mesh.pids, writer, "mixed")
        for pid in mesh.pids.values():
            reset_high_water(pid)
        since = sampler.now()
        began = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            statuses = list(pool.map(lambda body: upload(mesh.url, body), bodies))
        elapsed = time.monotonic() - began
        until = sampler.now()
        hwm = {name: high_water(pid) for name, pid in mesh.pids.items()}
        sampled = sampler.peak(since, until)
        sampler.phase = "idle"
        after_2 = settle(mesh.pids, 2)
        after_10 = settle(mesh.pids, args.idle - 2)
        sampler.stop()
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    # With several processes the sum of their high-water marks may add
    # peaks that were not simultaneous: it bounds the simultaneous peak.
    peak = max(sum(hwm.values()), sampled) if len(hwm) == 1 else sampled
    result = {"start": start, "peak": peak, "sampled": sampled, "hwm": hwm, "after_2": after_2,
              "after_10": after_10, "statuses": counts, "elapsed": elapsed, "busy": busy_answers}
    print(f"  mixed: {json.dumps({k: (v if k in ('statuses', 'hwm', 'elapsed', 'busy') else v // MIB) for k, v in result.items()})}",
          flush=True)
    return result


def report(args, rows: list[dict], stream: dict | None) -> None:
    where = "three processes (gateway + optimizer-svc + storage-svc)" if args.separate else "nws-mesh"
    print()
    print(f"Resident memory of {where}, L1 cache off, allocator: {args.label}.")
    if rows:
        print()
        print(f"{args.runs} sequential uploads per photo, a fresh mesh per photo "
              f"(peak: the kernel's VmHWM, and {SAMPLE_EVERY * 1000:.0f} ms samples).")
        print()
        print("| photo | decoded RGBA | target (4×RGBA + 32) | RSS at start | peak | peak − start "
              f"| after 2 s idle | after {args.idle:.0f} s idle | idle − start | uploads ok | median upload |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['image']} | {mib(r['rgba'])} | {mib(r['target'])} | {mib(r['start'])} | "
                  f"{mib(r['peak'])} | {mib(r['peak'] - r['start'])} | {mib(r['after_2'])} | "
                  f"{mib(r['after_10'])} | {mib(r['after_10'] - r['start'])} | {r['ok']}/{r['runs']} | {r['median_ms']:.0f} ms |")
    if stream:
        print()
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(stream["statuses"].items()))
        print(f"Mixed stream: {args.mixed} uploads of every photo in turn, {args.concurrency} at once "
              f"({stream['elapsed']:.1f} s; HTTP statuses {statuses}; "
              f"{stream['busy']} answers 503 (line full), each retried after its Retry-After).")
        print()
        print(f"| RSS at start | peak (target < 256) | after 2 s idle | after {args.idle:.0f} s idle "
              "| idle − start (target ≤ 64) |")
        print("|---:|---:|---:|---:|---:|")
        print(f"| {mib(stream['start'])} | {mib(stream['peak'])} | {mib(stream['after_2'])} | "
              f"{mib(stream['after_10'])} | {mib(stream['after_10'] - stream['start'])} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True, type=pathlib.Path)
    parser.add_argument("--images", type=pathlib.Path, default=pathlib.Path("../shared/testdata/images"))
    parser.add_argument("--runs", type=int, default=30, help="sequential uploads per photo")
    parser.add_argument("--mixed", type=int, default=120, help="uploads in the mixed stream")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds idle before the last reading")
    parser.add_argument("--csv", type=pathlib.Path, help="where the raw samples go")
    parser.add_argument("--preload", help="an allocator to LD_PRELOAD into the services")
    parser.add_argument("--label", default="as built", help="the allocator's name in the report")
    parser.add_argument("--separate", action="store_true", help="the three services as processes")
    parser.add_argument("--only", choices=["photos", "mixed"], help="one phase only")
    parser.add_argument("--photos", nargs="+", help="only the photos whose names contain one of these")
    args = parser.parse_args()
    sink = args.csv.open("w", newline="") if args.csv else None
    writer = csv.writer(sink) if sink else None
    if writer:
        writer.writerow(["run", "phase", "seconds", "process", "rss_bytes", "progress"])
    rows = per_photo(args, writer) if args.only != "mixed" else []
    stream = mixed(args, writer) if args.only != "photos" else None
    if sink:
        sink.close()
    report(args, rows, stream)

if __name__ == "__main__":
    main()
