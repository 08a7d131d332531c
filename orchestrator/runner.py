"""The swap job: its stored request, and what a worker runs for it through the pipeline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.casting import Person
from orchestrator.jobs.store import Job, JobStore
from orchestrator.jobs.workers import Beat, Run
from orchestrator.options import SwapOptions, VideoOptions
from orchestrator.pipeline import Progress, swap_image, swap_video
from orchestrator.plan import resolve_plan
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient

FILE_NAME = 255  # bytes: the files are named by the service in the job's folder


class JobRequest(BaseModel):
    """A swap job as stored: file names inside the job's folder, the face map and the options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: list[str] = Field(max_length=64)
    target: str = Field(max_length=FILE_NAME)
    reference: str | None = Field(None, max_length=FILE_NAME)
    output: str = Field(max_length=FILE_NAME)
    map: list[tuple[str, list[str]]] = Field([], max_length=64)  # each person's reference, source files
    options: SwapOptions = SwapOptions()
    video: VideoOptions = VideoOptions()

    @classmethod
    def of(
        cls,
        sources: list[str],
        target: str,
        reference: str | None,
        output: str,
        options: SwapOptions,
        video: VideoOptions,
        face_map: Sequence[Person] = (),
    ) -> JobRequest:
        people = [(person.reference, [path.name for path in person.sources]) for person in face_map]
        return cls(
            sources=sources,
            target=target,
            reference=reference,
            output=output,
            map=people,
            options=options,
            video=video,
        )

    def people(self, folder: Path) -> list[Person]:
        return [Person(reference, tuple(folder / name for name in names)) for reference, names in self.map]


def job_runner(
    triton: TritonClient, max_pixels: int, store: JobStore, frames_done: Callable[[int], None]
) -> Run:
    """The `run` of a WorkerPool: a swap job from its stored request, result written in its folder.

    `frames_done(n)` counts processed frames.
    """

    def run(job: Job, beat: Beat) -> tuple[str, dict]:
        folder = store.folder(job.id)
        request = JobRequest.model_validate(job.request)
        swapper = FaceSwapper(triton, plan=resolve_plan(triton, request.options), max_pixels=max_pixels)
        sources = [folder / name for name in request.sources]
        reference = folder / request.reference if request.reference else None
        output = folder / request.output
        if job.kind == "image":
            report = swap_image(
                swapper, sources, folder / request.target, output, reference, request.people(folder)
            )
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
                folder / request.target,
                output,
                reference=reference,
                video=request.video,
                progress=progress,
                cancel=cancel,
                face_map=request.people(folder),
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
