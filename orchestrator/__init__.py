"""The orchestration plane: face geometry, media I/O, jobs, the HTTP API and the CLI.

It talks to Triton only over gRPC (orchestrator.triton) and never runs a model itself.
"""
