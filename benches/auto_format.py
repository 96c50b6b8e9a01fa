"""Form uploads as a browser sends them, through the release mesh: with
Chrome's navigation Accept (it names image/avif and image/webp) and with
`Accept: image/jpeg`, alternating, each with a watermark text of its own so
every upload is a miss. Used by benches/auto_format.sh."""

import argparse
import statistics
import time
import urllib.request
import uuid

CHROME = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
          "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")


def form_upload(gateway: str, image: bytes, text: str, accept: str) -> tuple[float, str, str]:
    boundary = uuid.uuid4().hex
    body = b"".join([
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"wm_text\"\r\n\r\n{text}\r\n".encode(),
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n".encode(),
        image,
        f"\r\n--{boundary}--\r\n".encode(),
    ])
    request = urllib.request.Request(f"{gateway}/v1/watermark", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Accept": accept,
    })
    started = time.perf_counter()
    with urllib.request.urlopen(request) as response:
        response.read()
        return time.perf_counter() - started, response.headers["Content-Type"], response.headers["X-Cache"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--label", required=True)
    parser.add_argument("--repeat", action="store_true",
                        help="also upload each Chrome photo again once its compact variant is ready")
    args = parser.parse_args()
    image = open(args.image, "rb").read()
    run = uuid.uuid4().hex[:8]
    form_upload(args.gateway, image, f"warm-up {run}", "image/jpeg")
    chrome, jpeg, types = [], [], set()
    for i in range(args.count):
        took, media_type, _ = form_upload(args.gateway, image, f"chrome {run} {i}", CHROME)
        chrome.append(took)
        types.add(media_type)
        took, _, _ = form_upload(args.gateway, image, f"jpeg {run} {i}", "image/jpeg")
        jpeg.append(took)
    c, j = statistics.median(chrome) * 1000, statistics.median(jpeg) * 1000
    print(f"| {args.label} | {c:.1f} | {j:.1f} | {c / j:.2f}× | {', '.join(sorted(types))} |")
    if args.repeat:
        # The same upload again, after the background render had time.
        time.sleep(3)
        took, media_type, cache = form_upload(args.gateway, image, f"chrome {run} {args.count - 1}", CHROME)
        print(f"| {args.label}: the last Chrome upload again | {took * 1000:.1f} | | | {media_type}, {cache} |")


if __name__ == "__main__":
    main()
