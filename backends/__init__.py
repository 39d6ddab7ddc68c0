"""Model backends: each folder is a separate gRPC server process speaking localhost_ai/proto/backend.proto."""
