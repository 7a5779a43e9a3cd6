"""Thin client: gRPC to the Triton ensemble, Qdrant for vectors, CLIs (index, search)."""
