"""A stock gRPC client in Python reaches the micro proxy over TLS, trusting the server's
local CA, and lists the services through server reflection; without the CA it is
refused (the certificate is not trusted).

Usage: python tls_client.py <proxy host:port> <CA certificate PEM file>
"""
import sys

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def services(channel) -> list:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(stub.ServerReflectionInfo(iter([ask]), timeout=5))
    return [s.name for s in answer.list_services_response.service]


def main() -> int:
    target, ca = sys.argv[1], sys.argv[2]
    with open(ca, "rb") as f:
        root = f.read()
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    # The certificate names 127.0.0.1 and localhost; reach it as localhost too.
    with grpc.secure_channel(target, creds) as channel:
        names = services(channel)
        assert "registry.Registry" in names, names
    untrusted = grpc.ssl_channel_credentials()
    with grpc.secure_channel(target, untrusted) as channel:
        try:
            services(channel)
            raise AssertionError("a server signed by an unknown CA was trusted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
    print("python TLS client: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
