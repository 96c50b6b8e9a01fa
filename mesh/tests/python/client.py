"""A Python client generated from proto/ with grpcio-tools, used by the
gateway's integration tests: proof that clients in other languages work.

It generates the stubs into a temporary directory, then streams an image
through Optimizer.Optimize and through Storage.Put/Get, checking each answer.
"""

import argparse
import hashlib
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

CHUNK = 64 * 1024


def generate(proto_dir: pathlib.Path, out_dir: pathlib.Path) -> None:
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        + protos
    )
    if code != 0:
        sys.exit(f"protoc failed with {code}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proto-dir", required=True, type=pathlib.Path)
    parser.add_argument("--optimizer", required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--image", required=True, type=pathlib.Path)
    args = parser.parse_args()

    out_dir = pathlib.Path(tempfile.mkdtemp(prefix="nws-python-client-"))
    generate(args.proto_dir, out_dir)
    sys.path.insert(0, str(out_dir))
    from watermark.v1 import image_pb2, optimizer_pb2, optimizer_pb2_grpc, storage_pb2, storage_pb2_grpc

    data = args.image.read_bytes()

    with grpc.insecure_channel(args.optimizer) as channel:
        optimizer = optimizer_pb2_grpc.OptimizerStub(channel)

        def requests():
            yield optimizer_pb2.OptimizeRequest(
                options=optimizer_pb2.OptimizeOptions(
                    watermark_text="Python © NWS", position=optimizer_pb2.POSITION_TOP_RIGHT, quality=80
                )
            )
            for i in range(0, len(data), CHUNK):
                yield optimizer_pb2.OptimizeRequest(chunk=data[i : i + CHUNK])

        responses = optimizer.Optimize(requests(), timeout=60)
        first = next(responses)
        assert first.WhichOneof("payload") == "header", first
        header = first.header
        body = b"".join(r.chunk for r in responses)
        assert header.format == image_pb2.IMAGE_FORMAT_JPEG, header
        assert header.media_type == "image/jpeg", header
        assert header.width <= 1920 and header.height <= 1080, header
        assert len(body) == header.size, (len(body), header.size)
        assert body[:3] == b"\xff\xd8\xff", body[:3]
        print(f"optimize ok {header.width}x{header.height} {len(body)} bytes")

        try:
            optimizer.Probe(optimizer_pb2.ProbeRequest(header=b"not an image"), timeout=10)
            sys.exit("Probe accepted bytes that are not an image")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error

    with grpc.insecure_channel(args.storage) as channel:
        storage = storage_pb2_grpc.StorageStub(channel)
        expected = hashlib.sha256(data).hexdigest()

        def puts():
            yield storage_pb2.PutRequest(options=storage_pb2.PutOptions(expected_sha256=expected))
            for i in range(0, len(data), CHUNK):
                yield storage_pb2.PutRequest(chunk=data[i : i + CHUNK])

        receipt = storage.Put(puts(), timeout=60)
        assert receipt.sha256 == expected, receipt
        assert receipt.size == len(data), receipt

        stream = storage.Get(storage_pb2.GetRequest(sha256=expected), timeout=60)
        info = next(stream)
        assert info.WhichOneof("payload") == "info", info
        back = b"".join(m.chunk for m in stream)
        assert back == data, "Get returned different bytes"
        assert info.info.size == len(data), info
        print(f"put/get ok {expected}")


if __name__ == "__main__":
    main()
