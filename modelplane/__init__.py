"""The model plane: fetch models, build the Triton model repository, run a local Triton."""

ROLES = ("detector", "recognizer", "swapper", "enhancer")
