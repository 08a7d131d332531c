"""The face swap built from the face functions, Triton calls and media I/O.

`FaceSwapper` does the per-frame work for a batch of frames (detect, select, align, swap,
paste back, enhance), with one Triton call per step for the whole batch, so the server sees
batches. `swap_image` is the image job; `swap_video` streams a video through it:

    reader thread (ffmpeg decode) -> chunks of frames -> a pool processing several chunks at once
    (so Triton receives many requests and batches them) -> frames written in order (ffmpeg encode)

Queues between the stages are bounded, so memory stays flat however long the video is.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from orchestrator.chunking import FRAMES_PER_CHUNK, chunks_in_flight
from orchestrator.faces.align import template_for, warp_face
from orchestrator.faces.blend import DEFAULT_MASK_BLUR, box_mask, paste_back, paste_back_insightface
from orchestrator.faces.detect import DEFAULT_SCORE_THRESHOLD, faces_of, letterbox
from orchestrator.faces.identity import average_identity
from orchestrator.faces.select import (
    DEFAULT_REFERENCE_DISTANCE,
    ORDERS,
    SELECTORS,
    order_faces,
    select_faces,
)
from orchestrator.faces.types import Embedding, Face, Frame
from orchestrator.images import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_PIXELS,
    Picture,
    is_image,
    output_extension,
    read_image,
    write_image,
)
from orchestrator.media import FrameReader, FrameWriter, MediaError, probe
from orchestrator.triton import TritonClient

MASKS = ("box", "insightface")
ENHANCE_TEMPLATE = "ffhq_512"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm")


class SwapError(ValueError):
    """The job cannot be done with these inputs; the message is one line for the user."""


class Cancelled(Exception):
    """The job was cancelled while it ran."""


@dataclass(frozen=True)
class SwapOptions:
    selector: str = "many"
    order: str = "largest"
    index: int = 0
    reference_distance: float = DEFAULT_REFERENCE_DISTANCE
    mask: str = "box"
    mask_blur: float = DEFAULT_MASK_BLUR
    enhance: bool = False
    enhance_blend: int = 80  # percent of the enhanced face in the result
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        checks = [
            (
                self.selector in SELECTORS,
                f"unknown selector {self.selector!r}; choose {', '.join(SELECTORS)}",
            ),
            (self.order in ORDERS, f"unknown face order {self.order!r}; choose {', '.join(ORDERS)}"),
            (self.mask in MASKS, f"unknown mask {self.mask!r}; choose {', '.join(MASKS)}"),
            (self.index >= 0, f"the face index must be 0 or more, got {self.index}"),
            (
                0 <= self.enhance_blend <= 100,
                f"enhance blend must be within 0..100, got {self.enhance_blend}",
            ),
            (
                0 < self.score_threshold < 1,
                f"the face score threshold must be within 0..1, got {self.score_threshold}",
            ),
            (0 <= self.mask_blur <= 1, f"the mask blur must be within 0..1, got {self.mask_blur}"),
            (
                0 < self.reference_distance <= 2,
                f"the reference distance must be within 0..2, got {self.reference_distance}",
            ),
            (
                1 <= self.jpeg_quality <= 100,
                f"the JPEG quality must be within 1..100, got {self.jpeg_quality}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise SwapError(message)


@dataclass(frozen=True)
class VideoOptions:
    codec: str | None = None  # by the output's extension: libx264, or libvpx-vp9 for .webm
    crf: int = 18
    preset: str = "veryfast"  # half medium's encode cost, files no larger (docs/benchmarks.md)
    start: float | None = None  # seconds
    end: float | None = None
    reference_frame: int | None = None  # the target frame the reference face is taken from
    chunk_frames: int = FRAMES_PER_CHUNK  # frames per detector request
    chunks_in_flight: int = field(default_factory=chunks_in_flight)  # for this machine's cores


@dataclass
class Identity:
    """The source identity: its unit embedding and the swapper latent made from it."""

    embedding: Embedding
    latent: np.ndarray


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


class StageTimes:
    """Seconds spent per stage, summed over the threads that ran it."""

    def __init__(self):
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[stage] += time.perf_counter() - start


class FaceSwapper:
    def __init__(self, triton: TritonClient, options: SwapOptions = SwapOptions()):
        self.triton = triton
        self.options = options
        self.times = StageTimes()
        self._masks: dict[int, np.ndarray] = {}

    def _mask(self, size: int) -> np.ndarray:
        if size not in self._masks:
            self._masks[size] = box_mask(size, self.options.mask_blur)
        return self._masks[size]

    def find_faces(self, frames: list[Frame]) -> list[list[Face]]:
        """Faces of each frame, best score first; one batched detector call for all frames."""
        if not frames:
            return []
        height, width = self.triton.detector_size
        with self.times.measure("detect"):
            canvases = np.zeros((len(frames), height, width, 3), np.uint8)
            scales = [letterbox(frame, canvas) for frame, canvas in zip(frames, canvases, strict=True)]
            found = self.triton.detect(canvases, self.options.score_threshold)
            return [faces_of(found, i, scale) for i, scale in enumerate(scales)]

    def embed_faces(self, frames: list[Frame], faces: list[list[Face]]) -> None:
        """Give every face its identity embedding, with one batched call for all frames."""
        size = self.triton.crop_size("face_embed")
        with self.times.measure("embed"):
            pairs = [(face, frame) for frame, found in zip(frames, faces, strict=True) for face in found]
            crops = [warp_face(frame, face.landmarks, template_for(size), size)[0] for face, frame in pairs]
            if crops:
                for (face, _), embedding in zip(pairs, self.triton.embed(np.stack(crops)), strict=True):
                    face.embedding = embedding

    def find_portrait_faces(self, frames: list[Frame]) -> tuple[list[Frame], list[list[Face]]]:
        """Faces of photos that may be tight face crops, which SCRFD misses when a face fills the frame.

        A photo without faces is tried again inside a black border half its size wide; the padded
        photo is returned with the faces found in it.
        """
        found = self.find_faces(frames)
        frames = list(frames)
        for i, (frame, faces) in enumerate(zip(frames, found, strict=True)):
            if not faces:
                border = max(frame.shape[:2]) // 2
                padded = cv2.copyMakeBorder(frame, border, border, border, border, cv2.BORDER_CONSTANT)
                faces = self.find_faces([padded])[0]
                if faces:
                    frames[i], found[i] = padded, faces
        return frames, found

    def identity(self, sources: list[tuple[str, Frame]]) -> Identity:
        """One identity from the largest face of each source image; SwapError naming a faceless one."""
        frames, found = self.find_portrait_faces([frame for _, frame in sources])
        largest = []
        for (name, _), faces in zip(sources, found, strict=True):
            if not faces:
                raise SwapError(f"{name}: no face found in this source image")
            largest.append([order_faces(faces)[0]])
        self.embed_faces(frames, largest)
        embedding = average_identity(np.stack([faces[0].embedding for faces in largest]))
        return Identity(embedding, self.triton.latent(embedding))

    def reference(self, name: str, frame: Frame) -> Embedding:
        """The reference identity: the face `order`/`index` picks in a reference image or frame."""
        options = self.options
        (frame,), (found,) = self.find_portrait_faces([frame])
        faces = select_faces(found, "one", order=options.order, index=options.index)
        if not faces:
            raise SwapError(f"{name}: no face found to use as the reference")
        self.embed_faces([frame], [faces])
        return faces[0].embedding

    def select(
        self, frames: list[Frame], faces: list[list[Face]], reference: Embedding | None
    ) -> list[list[Face]]:
        options = self.options
        if options.selector == "reference":
            self.embed_faces(frames, faces)
        return [
            select_faces(
                found,
                options.selector,
                order=options.order,
                index=options.index,
                reference=reference,
                distance=options.reference_distance,
            )
            for found in faces
        ]

    def _crop_infer_paste(
        self, sources, destinations, faces, template: str, size: int, stage: str, infer, place
    ):
        """Crop every face from `sources`, run one Triton call on all crops, paste into `destinations`."""
        with self.times.measure("align"):
            jobs = [
                (destination, *warp_face(source, face.landmarks, template, size))
                for source, destination, found in zip(sources, destinations, faces, strict=True)
                for face in found
            ]
        if not jobs:
            return
        with self.times.measure(stage):
            results = infer(np.stack([crop for _, crop, _ in jobs]))
        with self.times.measure("paste"):
            for (destination, _, matrix), crop in zip(jobs, results, strict=True):
                place(destination, crop, matrix)

    def swap_frames(self, frames: list[Frame], faces: list[list[Face]], identity: Identity) -> list[Frame]:
        """Copies of `frames` with their `faces` swapped to `identity` (and enhanced if asked)."""
        results = [frame.copy() for frame in frames]
        size = self.triton.crop_size("face_swap")
        mask = self._mask(size)

        def place(frame, crop, matrix):
            if self.options.mask == "insightface":
                paste_back_insightface(frame, crop, matrix)
            else:
                paste_back(frame, crop, mask, matrix)

        def swap(crops):
            return self.triton.swap(crops, identity.latent)

        self._crop_infer_paste(frames, results, faces, template_for(size), size, "swap", swap, place)
        if self.options.enhance:
            size = self.triton.crop_size("face_enhance")
            blend = self._mask(size) * (self.options.enhance_blend / 100)

            def blend_in(frame, crop, matrix):
                paste_back(frame, crop, blend, matrix)

            self._crop_infer_paste(
                results, results, faces, ENHANCE_TEMPLATE, size, "enhance", self.triton.enhance, blend_in
            )
        return results

    def process(self, frames: list[Frame], identity: Identity, reference: Embedding | None) -> tuple:
        """Detect, select and swap a batch of frames: (result frames, faces found, faces swapped)."""
        found = self.find_faces(frames)
        selected = self.select(frames, found, reference)
        return self.swap_frames(frames, selected, identity), sum(map(len, found)), sum(map(len, selected))


def target_kind(path: Path) -> str:
    """ "image" or "video", by content; SwapError for an empty file or one that is neither."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise SwapError(f"{path.name}: the file is empty")
    if is_image(path):
        return "image"
    try:
        probe(path)
    except MediaError as error:
        reason = str(error).removeprefix(f"{path.name}: ")
        raise SwapError(f"{path.name}: not an image or a video this service reads ({reason})") from error
    return "video"


def _source_identity(swapper: FaceSwapper, sources: list[Path]) -> Identity:
    limit = swapper.options.max_pixels
    return swapper.identity([(Path(p).name, read_image(p, limit).frame) for p in sources])


def swap_image(
    swapper: FaceSwapper, sources: list[Path], target: Path, output: Path, reference: Path | None = None
) -> SwapReport:
    """Swap the source identity onto the selected faces of a target image; write `output` atomically.

    A target without faces is written unchanged, with a warning in the report.
    """
    options = swapper.options
    output_extension(output)  # refuse an unwritable format before any work
    if options.selector == "reference" and reference is None:
        raise SwapError("the reference selector needs a reference image (--reference)")
    picture = read_image(target, options.max_pixels)
    reference_embedding = None
    if options.selector == "reference":
        reference_embedding = swapper.reference(
            Path(reference).name, read_image(reference, options.max_pixels).frame
        )
    identity = _source_identity(swapper, sources)
    (result,), found, swapped = swapper.process([picture.frame], identity, reference_embedding)
    report = SwapReport(faces=found, swapped=swapped)
    if not found:
        report.warnings.append(f"{Path(target).name}: no face found; the target is written unchanged")
    elif not swapped:
        report.warnings.append(
            f"{Path(target).name}: no face matched the selection; the target is written unchanged"
        )
    write_image(output, Picture(result, picture.alpha), options.jpeg_quality)
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
) -> SwapReport:
    """Swap the source identity through a whole video, with its audio; write `output` atomically.

    Frames leave in order; at most `chunks_in_flight` + 2 chunks of frames are in memory. On any
    failure, cancellation or interrupt, no output and no temporary file remain.
    """
    options = swapper.options
    if Path(output).suffix.lower() not in VIDEO_EXTENSIONS:
        raise SwapError(
            f"{Path(output).name}: a video target needs a video output ({', '.join(VIDEO_EXTENSIONS)})"
        )
    info = probe(target)
    if options.selector == "reference" and reference is None and video.reference_frame is None:
        raise SwapError("the reference selector needs a reference image or a reference frame")
    identity = _source_identity(swapper, sources)
    reference_embedding = None
    if options.selector == "reference":
        if reference is not None:
            reference_embedding = swapper.reference(
                Path(reference).name, read_image(reference, options.max_pixels).frame
            )
        else:
            at = video.reference_frame / float(info.fps)
            with FrameReader(info, start=at, end=at + 1.5 / float(info.fps)) as frames:
                frame = next(iter(frames), None)
            if frame is None:
                raise SwapError(f"{info.path.name}: there is no frame {video.reference_frame}")
            reference_embedding = swapper.reference(f"{info.path.name} frame {video.reference_frame}", frame)

    report = SwapReport(frames=0)
    started = time.perf_counter()
    stop = threading.Event()
    chunks: queue.Queue = queue.Queue(maxsize=2)
    with (
        FrameReader(info, video.start, video.end) as reader,
        FrameWriter(
            output,
            width=info.width,
            height=info.height,
            fps=info.fps,
            audio_from=info,
            start=video.start,
            end=video.end,
            codec=video.codec,
            crf=video.crf,
            preset=video.preset,
        ) as writer,
        ThreadPoolExecutor(video.chunks_in_flight, thread_name_prefix="frames") as pool,
    ):
        total = reader.expected_frames
        reading = threading.Thread(
            target=_read_chunks, args=(reader, video.chunk_frames, chunks, stop), daemon=True
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
                pending.append(pool.submit(swapper.process, chunk, identity, reference_embedding))
                while len(pending) >= video.chunks_in_flight:
                    write_oldest()
            while pending:
                write_oldest()
        except BaseException:
            stop.set()
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
