"""Protobuf and gRPC bindings generated from ``protos/llbgen/pb`` when the package is built."""
