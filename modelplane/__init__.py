"""The model plane: fetch models, build the Triton model repository, run a local Triton."""

ROLES = ("detector", "recognizer", "swapper", "enhancer")
MASK_ROLES = ("occluder", "parser", "landmarker")  # optional: each adds a mask (modelplane.mask_roles)
