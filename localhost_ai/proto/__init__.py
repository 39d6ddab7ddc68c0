"""The gRPC contract between host and backends: backend.proto and its generated stubs."""
