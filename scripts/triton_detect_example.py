#!/usr/bin/env python3
"""A direct Triton client for `face_detect`: draws the faces it finds, with numpy, OpenCV and tritonclient.

    scripts/triton_detect_example.py IMAGE OUTPUT.jpg [--url localhost:8001]
                                     [--score-threshold 0.5] [--iou-threshold 0.4]

It letterboxes the image into the model's input, sends it (with the thresholds, which are
optional inputs), and draws each face's box, score and five landmarks, scaled back to the image.
"""

import argparse

import cv2
import numpy as np
import tritonclient.grpc as grpcclient

GREEN, RED = (0, 255, 0), (0, 0, 255)


def detect(client, image, score_threshold=None, iou_threshold=None):
    """The faces of a BGR image, best first: boxes [N, 4] (x1, y1, x2, y2), scores [N], landmarks
    [N, 5, 2], in image pixels."""
    # The image resized keeping its aspect ratio to fit the detector's size (640x640 for SCRFD), into
    # the top-left corner of a black canvas. A detector that takes any size (input dims -1) takes a
    # canvas that stops at the image rounded up to its stride: less padding to compute.
    config = client.get_model_config("face_detect", as_json=True)["config"]
    parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
    width, height = (int(side) for side in parameters["detector_size"].split("x"))
    scale = min(height / image.shape[0], width / image.shape[1])
    resized = cv2.resize(image, (int(image.shape[1] * scale), int(image.shape[0] * scale)))
    if parameters["any_size"] == "true":
        stride = int(parameters["stride"])
        height, width = (-(-side // stride) * stride for side in resized.shape[:2])
    canvas = np.zeros((1, height, width, 3), np.uint8)
    canvas[0, : resized.shape[0], : resized.shape[1]] = resized

    inputs = [grpcclient.InferInput("image", list(canvas.shape), "UINT8")]
    inputs[0].set_data_from_numpy(canvas)
    for name, value in (("score_threshold", score_threshold), ("iou_threshold", iou_threshold)):
        if value is not None:  # optional inputs: the model has defaults
            inputs.append(grpcclient.InferInput(name, [1, 1], "FP32"))
            inputs[-1].set_data_from_numpy(np.array([[value]], np.float32))
    result = client.infer("face_detect", inputs)

    count = int(result.as_numpy("count")[0, 0])  # the rows after it are zero padding
    boxes = result.as_numpy("boxes")[0, :count] / scale  # canvas pixels -> image pixels
    landmarks = result.as_numpy("landmarks")[0, :count] / scale  # eyes, nose tip, mouth corners
    return boxes, result.as_numpy("scores")[0, :count], landmarks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("output")
    parser.add_argument("--url", default="localhost:8001", help="Triton gRPC HOST:PORT")
    parser.add_argument("--score-threshold", type=float, help="default: the model's (0.5)")
    parser.add_argument("--iou-threshold", type=float, help="default: the model's (0.4)")
    args = parser.parse_args()
    client = grpcclient.InferenceServerClient(args.url)
    image = cv2.imread(args.image)
    boxes, scores, landmarks = detect(client, image, args.score_threshold, args.iou_threshold)
    for box, score, points in zip(boxes, scores, landmarks, strict=True):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), GREEN, 2)
        cv2.putText(image, f"{score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, GREEN, 1)
        for x, y in points:
            cv2.circle(image, (round(float(x)), round(float(y))), 2, RED, -1)
    cv2.imwrite(args.output, image)
    print(f"{len(boxes)} faces; wrote {args.output}")


if __name__ == "__main__":
    main()
