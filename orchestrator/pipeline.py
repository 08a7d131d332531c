"""The image and video swaps: media in, batches of frames through the request's cast and chain
(`orchestrator.casting`, `orchestrator.processors`), media out.

`swap_image` is the image job; `swap_video` streams a video:

    reader thread (ffmpeg decode) -> chunks of frames -> a pool processing several chunks at once
    (so Triton receives many requests and batches them) -> frames written in order (ffmpeg encode)

Queues between the stages are bounded, so memory stays flat however long the video is. With tracking,
detection and swap are separate pool stages with the tracker between them, in frame order
(`orchestrator.tracking`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.casting import Person, cast_for
from orchestrator.choices import VIDEO_CONTAINERS, container_of, unreadable
from orchestrator.chunking import FRAMES_PER_CHUNK, chunks_in_flight
from orchestrator.errors import Cancelled, InputError, UnsupportedMedia
from orchestrator.faces.types import Embedding, Frame
from orchestrator.images import Photo, Picture, image_size, output_extension, write_image
from orchestrator.media import FrameReader, FrameWriter, MediaError, VideoInfo, VideoLimits, probe
from orchestrator.options import VideoOptions
from orchestrator.swapper import FaceSwapper
from orchestrator.tracking import TrackedSwap


@dataclass(frozen=True)
class Throughput:
    """How a video is fed to Triton: frames per detector request, and chunks processed at once."""

    chunk_frames: int = FRAMES_PER_CHUNK  # frames per detector request
    # Triton batches the requests of chunks in flight together; how many suits this machine's cores.
    chunks_in_flight: int = field(default_factory=chunks_in_flight)


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    elapsed: float

    @property
    def fps(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.fps if self.fps > 0 and self.total >= self.done else None


@dataclass
class SwapReport:
    faces: int = 0  # faces found (in all frames)
    swapped: int = 0
    frames: int = 1
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # time spent per stage, summed over threads


def target_kind(path: Path, max_pixels: int, limits: VideoLimits) -> str:
    """ "image" or "video", by content; InputError for an empty file or one that is neither, OverLimit
    for an image over `max_pixels` pixels or a video over `limits`."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path.name}: the file is empty")
    if image_size(path, max_pixels) is not None:
        return "image"
    try:
        probe(path, limits)
    except (MediaError, UnsupportedMedia) as error:
        reason = str(error).removeprefix(f"{path.name}: ")
        raise InputError(unreadable(path.name, reason, videos=True)) from error
    return "video"


def reference_embedding(
    swapper: FaceSwapper,
    reference: Photo | None,
    video: VideoInfo | None = None,
    reference_frame: int | None = None,
) -> Embedding | None:
    """The identity the reference selector looks for: from a reference image, else a target video frame.

    None when the selector is not `reference`; InputError when it is and neither is given.
    """
    if swapper.options.selector != "reference":
        return None
    if reference is not None:
        return swapper.reference(reference.name, swapper.read(reference).frame)
    if video is None or reference_frame is None:
        needed = "a reference image or a reference frame" if video else "a reference image (--reference)"
        raise InputError(f"the reference selector needs {needed}")
    frame = video_frame(video, reference_frame)
    return swapper.reference(f"{video.path.name} frame {reference_frame}", frame)


def video_frame(video: VideoInfo, index: int) -> Frame:
    """Frame `index` of a video; InputError when it has none."""
    at = index / float(video.fps)
    if at >= video.duration:
        raise InputError(f"{video.path.name}: there is no frame {index}")
    with FrameReader(video, start=at, end=at + 1.5 / float(video.fps)) as frames:
        frame = next(iter(frames), None)
    if frame is None:
        raise InputError(f"{video.path.name}: there is no frame {index}")
    return frame


def swap_image(
    swapper: FaceSwapper,
    sources: list[Path],
    target: Path,
    output: Path,
    reference: Path | None = None,
    face_map: Sequence[Person] = (),
) -> SwapReport:
    """Swap the source identity onto the selected faces of a target image (or each mapped person's
    onto theirs); write `output` atomically.

    A target without faces is written unchanged, with a warning in the report.
    """
    output_extension(output)  # refuse an unwritable format before any work
    looked_for = None if face_map else reference_embedding(swapper, reference)
    picture = swapper.read(target)
    cast = cast_for(swapper, sources, face_map, looked_for)
    (result,), found, swapped = cast.process(swapper, [picture.frame])
    report = SwapReport(faces=found, swapped=swapped)
    if not found:
        report.warnings.append(f"{Path(target).name}: no face found; the target is written unchanged")
    elif not swapped:
        report.warnings.append(
            f"{Path(target).name}: no face matched the selection; the target is written unchanged"
        )
    write_image(output, Picture(result, picture.alpha), swapper.options.jpeg_quality)
    report.seconds = dict(swapper.times.seconds)
    return report


def _read_chunks(reader: FrameReader, size: int, chunks: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: frames in chunks onto a bounded queue, then None, or the exception that ended it."""

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        chunk = []
        for frame in reader:
            chunk.append(frame)
            if len(chunk) == size:
                if not hand_over(chunk):
                    return
                chunk = []
        if chunk and not hand_over(chunk):
            return
        hand_over(None)
    except Exception as error:  # handed to the main thread, which raises it
        hand_over(error)


def swap_video(
    swapper: FaceSwapper,
    sources: list[Path],
    target: Path,
    output: Path,
    *,
    reference: Path | None = None,
    video: VideoOptions = VideoOptions(),
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    throughput: Throughput = Throughput(),
    face_map: Sequence[Person] = (),
) -> SwapReport:
    """Swap the source identity (or each mapped person's) through a whole video, with its audio;
    write `output` atomically. With `video.tracking`, faces are followed from frame to frame.

    Frames leave in order; at most `throughput.chunks_in_flight` + 2 chunks of frames are in memory (with
    tracking, as many again being detected and `video.track_gap` frames more). On any failure,
    cancellation or interrupt, no output and no temporary file remain.
    """
    container = container_of(Path(output).suffix)
    if container is None:
        choices = ", ".join(f".{c}" for c in VIDEO_CONTAINERS)
        raise InputError(f"{Path(output).name}: a video target needs a video output ({choices})")
    problem = video.codec_problem(container)
    if problem:
        raise InputError(problem)
    info = probe(target)
    looked_for = None if face_map else reference_embedding(swapper, reference, info, video.reference_frame)
    cast = cast_for(swapper, sources, face_map, looked_for)

    report = SwapReport(frames=0)
    started = time.perf_counter()
    stop = threading.Event()
    chunks: queue.Queue = queue.Queue(maxsize=2)
    with (
        FrameReader(info, video.start, video.end) as reader,
        FrameWriter.like(info, output, video) as writer,
        ThreadPoolExecutor(throughput.chunks_in_flight, thread_name_prefix="frames") as pool,
    ):
        total = reader.expected_frames
        depth = throughput.chunks_in_flight
        tracked = TrackedSwap(swapper, cast, video, pool, depth) if video.tracking else None
        reading = threading.Thread(
            target=_read_chunks, args=(reader, throughput.chunk_frames, chunks, stop), daemon=True
        )
        reading.start()
        pending: deque[Future] = deque()

        def write_oldest():
            frames, found, swapped = pending.popleft().result()
            with swapper.times.measure("encode"):
                for frame in frames:
                    writer.write(frame)
            report.frames += len(frames)
            report.faces += found
            report.swapped += swapped
            if progress is not None:
                progress(Progress(report.frames, max(total, report.frames), time.perf_counter() - started))

        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                with swapper.times.measure("decode"):
                    chunk = chunks.get()
                if chunk is None:
                    break
                if isinstance(chunk, Exception):
                    raise chunk
                if tracked is None:
                    pending.append(pool.submit(cast.process, swapper, chunk))
                else:
                    pending.extend(tracked.submit(chunk))
                while len(pending) >= throughput.chunks_in_flight:
                    write_oldest()
            if tracked is not None:
                pending.extend(tracked.finish())
            while pending:
                write_oldest()
        except BaseException:
            stop.set()
            if tracked is not None:
                tracked.cancel()
            for future in pending:
                future.cancel()
            reader.close()
            raise
        finally:
            reading.join(timeout=10)
    if report.faces == 0:
        report.warnings.append(
            f"{info.path.name}: no face found in any frame; the video is re-encoded unchanged"
        )
    report.seconds = dict(swapper.times.seconds)
    return report
