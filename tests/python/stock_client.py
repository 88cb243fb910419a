"""A stock gRPC client in Python, generated from the helloworld proto with no project
code, calls helloworld through the micro proxy; then, knowing nothing but the proxy's
address, discovers the service through server reflection and calls it again.

Usage: python stock_client.py <proxy host:port> <path to helloworld.proto's folder>
"""
import os
import sys
import tempfile

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_tools import protoc


def main() -> int:
    target, proto_dir = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp()
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_dir, "helloworld.proto")])
    if rc != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    sys.path.insert(0, out)
    import helloworld_pb2
    import helloworld_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        reply = stub.Hello(helloworld_pb2.HelloRequest(name="Alice"), timeout=5)
        assert reply.message == "Hello Alice", reply
        replies = [r.message for r in stub.Stream(helloworld_pb2.StreamRequest(name="Bo", count=3), timeout=5)]
        assert replies == ["Hello Bo 1", "Hello Bo 2", "Hello Bo 3"], replies
        try:
            stub.Hello(helloworld_pb2.HelloRequest(name=""), timeout=5)
            raise AssertionError("empty name accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e

        # Reflection: the proxy lists the core services and every registered one, and
        # describes helloworld well enough to call it without generated code.
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        for expected in ["helloworld.Greeter", "registry.Registry", "grpc.health.v1.Health"]:
            assert expected in services, services
        pool = descriptor_pool.DescriptorPool(db)
        hello = pool.FindServiceByName("helloworld.Greeter").FindMethodByName("Hello")
        request_class = message_factory.GetMessageClass(hello.input_type)
        reply_class = message_factory.GetMessageClass(hello.output_type)
        call = channel.unary_unary("/helloworld.Greeter/Hello", request_serializer=request_class.SerializeToString,
                                   response_deserializer=reply_class.FromString)
        reply = call(request_class(name="Reflected"), timeout=5)
        assert reply.message == "Hello Reflected", reply
        try:
            pool.FindServiceByName("nosuch.Service")
            raise AssertionError("unknown service described")
        except KeyError:
            pass
    print("python stock client: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
