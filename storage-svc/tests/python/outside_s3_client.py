"""An S3 client outside the project (boto3) reads what Storage wrote.

Prints one line per object: `<key> <content-type> <size> [sha256-ok]`.
"""

import argparse
import hashlib
import sys

import boto3
from botocore.config import Config


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--original", required=True, help="SHA-256 of an original")
    parser.add_argument("--result", required=True, help="key of a result")
    args = parser.parse_args()

    s3 = boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    listed = s3.list_objects_v2(Bucket=args.bucket)
    keys = sorted(item["Key"] for item in listed.get("Contents", []))
    expected = sorted([f"originals/{args.original}", f"results/{args.result}"])
    if keys != expected:
        print(f"bucket holds {keys}, expected {expected}", file=sys.stderr)
        return 1

    for key in keys:
        obj = s3.get_object(Bucket=args.bucket, Key=key)
        body = obj["Body"].read()
        verdict = ""
        if key.startswith("originals/"):
            if hashlib.sha256(body).hexdigest() != key.split("/", 1)[1]:
                print(f"{key}: content does not hash to its key", file=sys.stderr)
                return 1
            verdict = " sha256-ok"
        print(f"{key} {obj['ContentType']} {len(body)}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
