#!/usr/bin/env python3
"""A direct Triton client for the face-swap ensembles: numpy, OpenCV and tritonclient only.

    scripts/triton_client_example.py SOURCE.jpg TARGET.jpg OUTPUT.jpg [--url localhost:8001]

It finds the best face of each image with `face_detect` (see triton_detect_example.py), embeds
the source face with `face_embed`, turns the embedding into the swapper's latent with `swap_latent`, swaps the
target face with `face_swap` and pastes the crop back with a soft oval mask. The orchestrator
does all this better (many faces, feathered paste-back, video); this shows the tensors.
"""

import argparse

import cv2
import numpy as np
import tritonclient.grpc as grpcclient
from triton_detect_example import detect  # beside this script

ARCFACE = np.array(
    [[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]], np.float32
)


def infer(client, model, **inputs):
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(
            name, list(array.shape), "UINT8" if array.dtype == np.uint8 else "FP32"
        )
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(model, tensors)
    return {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}


def best_face(client, image):
    """Landmarks [5, 2] of the highest-scoring face (face_detect answers best first)."""
    _, _, landmarks = detect(client, image)
    if len(landmarks) == 0:
        raise SystemExit("error: no face found")
    return landmarks[0]


def aligned(image, landmarks, size, shift_x):
    template = (ARCFACE + (shift_x, 0)) * size / (112 + 2 * shift_x)
    matrix, _ = cv2.estimateAffinePartial2D(
        landmarks, template, method=cv2.RANSAC, ransacReprojThreshold=1000
    )
    return cv2.warpAffine(image, matrix, (size, size)), matrix


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("output")
    parser.add_argument("--url", default="localhost:8001", help="Triton gRPC HOST:PORT")
    args = parser.parse_args()
    client = grpcclient.InferenceServerClient(args.url)
    source, target = cv2.imread(args.source), cv2.imread(args.target)

    crop, _ = aligned(source, best_face(client, source), 112, 0)
    raw = infer(client, "face_embed", crop=crop[None])["raw_embedding"]  # [1, 512], before normalising
    latent = infer(client, "swap_latent", embedding=raw)["latent"]  # [1, 512]

    crop, matrix = aligned(target, best_face(client, target), 128, 8)
    swapped = infer(client, "face_swap", crop=crop[None], latent=latent)["swapped"][0]  # uint8 BGR

    mask = np.zeros((128, 128), np.float32)
    cv2.ellipse(mask, (64, 70), (44, 56), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 6)
    inverse = cv2.invertAffineTransform(matrix)
    size = (target.shape[1], target.shape[0])
    face = cv2.warpAffine(swapped, inverse, size).astype(np.float32)
    weight = cv2.warpAffine(mask, inverse, size)[:, :, None]
    cv2.imwrite(args.output, (weight * face + (1 - weight) * target).astype(np.uint8))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
