"""The model plane: fetch models, build the Triton model repository, run a local Triton.

Kept free of imports: the orchestrator imports `modelplane.contract` alone, without ONNX.
"""
