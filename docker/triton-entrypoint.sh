#!/usr/bin/env bash
# Triton's entrypoint: make the model repository ready from verified models, then exec tritonserver.
#
#   $MODEL_DIR/files       the role models and their lock: fetched, or copied from the given files;
#                          a missing file or one that fails its checksum is fetched or copied again
#   $MODEL_DIR/repository  the prepared repository, re-prepared only when its stamp (.prepared.json)
#                          no longer matches the files and options
#
# Environment (all optional):
#   MODEL_DIR            default /models
#   TRITON_RENDERING     gpu (onnxruntime backend, default) or cpu (onnxruntime_python backend)
#   TRITON_TENSORRT      1: TensorRT FP16 accelerator in the GPU rendering
#   FACESWAP_<ROLE>      one per role of modelplane/roles (DETECTOR, RECOGNIZER, SWAPPER, ENHANCER,
#                        and the optional OCCLUDER, PARSER, LANDMARKER, left out when empty)
#                        a manifest model name (e.g. inswapper_128_fp16), a URL or a file;
#                        default: the manifest's model for the role
#                        SWAPPER and ENHANCER may list several, comma-separated: the first is
#                        the default, the others are served beside it (requests choose them)
#   FACESWAP_SWAPPER_FAMILY, FACESWAP_ENHANCER_FAMILY, FACESWAP_CONVERTER
#                        the families of own files (at the same positions), and the converter
#                        of a ghost, simswap or hififace file (modelplane/families.py)
#   TRITON_EXTRA_ARGS    more tritonserver flags, split on spaces
#   TRITONSERVER         the server binary (default tritonserver); PYTHON (default python3)
# Arguments go to tritonserver after all others.
set -euo pipefail

project=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model_dir=${MODEL_DIR:-/models}
rendering=${TRITON_RENDERING:-gpu}

case $rendering in
  gpu) config_args=() ;;
  cpu) config_args=(--model-config-name=cpu) ;;
  *)
    echo "error: TRITON_RENDERING must be gpu or cpu, not '$rendering'" >&2
    exit 2
    ;;
esac

build_args=(--models-dir "$model_dir/files" --repository "$model_dir/repository")
if [ "${TRITON_TENSORRT:-0}" = 1 ]; then
  build_args+=(--tensorrt)
fi
# Each role's FACESWAP_<ROLE>, the families and the converter are read by modelplane itself.
build_args+=(--from-environment)

# The model choices are not echoed: a URL may carry a token.
echo "triton-entrypoint: checking the models in $model_dir ($rendering rendering)" >&2
if ! PYTHONPATH="$project${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m modelplane build "${build_args[@]}"; then
  echo "triton-entrypoint: tritonserver not started: the model repository is not ready" \
    "(see the error above; FACESWAP_DETECTOR and the like choose other models or local files)" >&2
  exit 1
fi

set -f # TRITON_EXTRA_ARGS is split on spaces, never globbed
# shellcheck disable=SC2086
exec "${TRITONSERVER:-tritonserver}" --model-repository="$model_dir/repository" "${config_args[@]}" \
  --http-port 8000 --grpc-port 8001 --metrics-port 8002 ${TRITON_EXTRA_ARGS:-} "$@"
