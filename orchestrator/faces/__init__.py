"""Pure functions on arrays: detection decoding, alignment, identity, selection, blending."""
