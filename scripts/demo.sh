#!/usr/bin/env bash
# The main job on sample media: a face swap through a local Triton, with all the set-up it needs.
#
#   scripts/demo.sh            fetch the manifest's models (first run), prepare the repository,
#                              start Triton on loopback, swap a sample face onto a sample photo
#   scripts/demo.sh --twins    the same path with contract twins, for machines without internet:
#                              NOT a real face swap (the real detector is used when ../shared has it)
#
# Sample photos come from the installed InsightFace package; the sample video is made from one of
# them with ffmpeg (the photo drifting over a test pattern, with a tone). Results go to outputs/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh

server_args=()
if [[ ${1:-} == --twins ]]; then
  server_args=(--twins)
  if [[ -f ../shared/models/scrfd_2.5g_kps.onnx ]]; then
    server_args+=(--detector ../shared/models/scrfd_2.5g_kps.onnx)
  fi
fi
scripts/triton_local.sh start "${server_args[@]}"

samples=$(.venv/bin/python -c 'import insightface, os; print(os.path.join(os.path.dirname(insightface.__file__), "data", "images"))')
mkdir -p outputs
.venv/bin/python -m orchestrator swap \
  --source "$samples/Tom_Hanks_54745.png" --target "$samples/t1.jpg" \
  --output outputs/demo_swap.jpg --triton-url "127.0.0.1:${TRITON_GRPC_PORT:-8001}"

ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=960x540:rate=25:duration=4 -loop 1 -i "$samples/t1.jpg" \
  -f lavfi -i sine=frequency=330:duration=4 \
  -filter_complex "[1]scale=800:-2[photo];[0][photo]overlay=x='40+20*t':y=-20:shortest=1,format=yuv420p[v]" \
  -map "[v]" -map 2:a -c:v libx264 -preset veryfast -c:a aac outputs/demo_target.mp4
.venv/bin/python -m orchestrator swap \
  --source "$samples/Tom_Hanks_54745.png" --target outputs/demo_target.mp4 \
  --output outputs/demo_swap.mp4 --preset veryfast --triton-url "127.0.0.1:${TRITON_GRPC_PORT:-8001}"

echo "The local Triton keeps running: scripts/triton_local.sh stop"
if [[ ${1:-} == --twins ]]; then
  cat >&2 <<'WARNING'

  ************************************************************************************
  *  CONTRACT TWINS: these outputs went through the real pipeline and a real Triton,  *
  *  but the swapper and enhancer are stand-ins. They are NOT real face swaps.        *
  *  Run scripts/demo.sh without --twins (needs the internet once) for the real one.  *
  ************************************************************************************
WARNING
fi
