"""The swap job: what a worker runs for a stored job request, through the pipeline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from orchestrator.casting import Person
from orchestrator.jobs.store import Job, JobStore
from orchestrator.jobs.workers import Beat, Run
from orchestrator.options import SwapOptions, VideoOptions
from orchestrator.pipeline import FaceSwapper, Progress, swap_image, swap_video
from orchestrator.triton import TritonClient


def job_request(
    sources: list[str],
    target: str,
    reference: str | None,
    output: str,
    options: SwapOptions,
    video: VideoOptions,
    face_map: Sequence[Person] = (),
) -> dict:
    """The stored request of a swap job: file names inside the job's folder, and its options."""
    return {
        "map": [[person.reference, [path.name for path in person.sources]] for person in face_map],
        "sources": sources,
        "target": target,
        "reference": reference,
        "output": output,
        "options": options.model_dump(mode="json"),
        "video": video.model_dump(mode="json"),
    }


def job_runner(
    triton: TritonClient, max_pixels: int, store: JobStore, frames_done: Callable[[int], None]
) -> Run:
    """The `run` of a WorkerPool: a swap job from its stored request, result written in its folder.

    `frames_done(n)` counts processed frames.
    """

    def run(job: Job, beat: Beat) -> tuple[str, dict]:
        folder = store.folder(job.id)
        request = job.request
        swapper = FaceSwapper(triton, SwapOptions.model_validate(request["options"]), max_pixels)
        sources = [folder / name for name in request["sources"]]
        reference = folder / request["reference"] if request.get("reference") else None
        output = folder / request["output"]
        face_map = [
            Person(ref, tuple(folder / name for name in names)) for ref, names in request.get("map", [])
        ]
        if job.kind == "image":
            report = swap_image(swapper, sources, folder / request["target"], output, reference, face_map)
            beat(1, 1)
            frames_done(1)
        else:
            cancel = threading.Event()
            counted = [0]

            def progress(p: Progress) -> None:
                frames_done(p.done - counted[0])
                counted[0] = p.done
                if beat(p.done, p.total):
                    cancel.set()

            report = swap_video(
                swapper,
                sources,
                folder / request["target"],
                output,
                reference=reference,
                video=VideoOptions.model_validate(request.get("video", {})),
                progress=progress,
                cancel=cancel,
                face_map=face_map,
            )
        summary = {
            "faces": report.faces,
            "swapped": report.swapped,
            "frames": report.frames,
            "warnings": report.warnings,
            "seconds": {stage: round(value, 3) for stage, value in report.seconds.items()},
        }
        return output.name, summary

    return run
