"""The Open Inference Protocol's gRPC messages: the .proto and the module protoc generated
from it (python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. open_inference.proto)."""
