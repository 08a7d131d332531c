"""The face swap built from the face functions, Triton calls and media I/O.

`FaceSwapper` does the per-frame work for a batch of frames (detect, select, align, swap,
paste back, enhance), with one Triton call per step for the whole batch, so the server sees
batches. `swap_image` is the image job; `swap_video` streams a video through it:

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
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import cv2
import numpy as np

from orchestrator.casting import Person, cast_for
from orchestrator.choices import VIDEO_CONTAINERS, container_of
from orchestrator.chunking import FRAMES_PER_CHUNK, chunks_in_flight
from orchestrator.errors import Cancelled, InputError, UnsupportedMedia
from orchestrator.faces.align import template_for, warp_face
from orchestrator.faces.blend import paste_back, paste_back_insightface
from orchestrator.faces.boost import boost_factor, swap_boosted
from orchestrator.faces.detect import faces_of, letterbox
from orchestrator.faces.identity import (
    NEUTRAL_SWAP_WEIGHT,
    WEIGHT_TARGETS,
    average_identity,
    balanced_latents,
    mean_embedding,
)
from orchestrator.faces.rotate import find_at_angles, parse_angles
from orchestrator.faces.select import order_faces, select_faces
from orchestrator.faces.types import Crop, Embedding, Face, Frame, Mask, Matrix
from orchestrator.images import (
    DEFAULT_MAX_PIXELS,
    Picture,
    image_size,
    output_extension,
    read_image,
    write_image,
)
from orchestrator.masking import FaceMasker
from orchestrator.media import FrameReader, FrameWriter, MediaError, VideoInfo, VideoLimits, probe
from orchestrator.options import SwapOptions, VideoOptions
from orchestrator.served import ServedModel, choose
from orchestrator.tracking import TrackedSwap
from orchestrator.triton import TritonClient

ENHANCE_TEMPLATE = "ffhq_512"
PORTRAIT_SIDE = 1280  # the longest side of a faceless photo tried again inside a border (twice SCRFD's)


@dataclass(frozen=True)
class Throughput:
    """How a video is fed to Triton: frames per detector request, and chunks processed at once."""

    chunk_frames: int = FRAMES_PER_CHUNK  # frames per detector request
    # Triton batches the requests of chunks in flight together; how many suits this machine's cores.
    chunks_in_flight: int = field(default_factory=chunks_in_flight)


@dataclass
class Identity:
    """The source identity: its unit embedding, its raw one (the mean of its faces') and the swapper's
    source input made from that (the latent, or for families whose source is an image the aligned
    source crop)."""

    embedding: Embedding
    raw_embedding: np.ndarray
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


Infer = Callable[[np.ndarray], np.ndarray]  # uint8 crops [B,S,S,3] -> processed crops, same shape
Place = Callable[[Frame, Crop, Matrix, Mask], object]  # blend a processed crop back into its frame, in place


@dataclass(frozen=True)
class CropStep:
    """One model step on aligned face crops: how they are cut, processed and put back."""

    stage: str  # the name its time is reported under
    template: str
    size: int
    infer: Infer
    place: Place


def pixel_boost(triton: TritonClient, options: SwapOptions) -> int:
    """k of the options' pixel boost on the chosen swapper (faces aligned at k times its crop size),
    1 without one; InputError when the boost is not a multiple of the swapper's crop size."""
    if options.pixel_boost is None:
        return 1
    swapper = choose(triton, "swapper", options.swapper)
    return boost_factor(options.pixel_boost, triton.crop_size(swapper.ensemble))


class FaceSwapper:
    """The per-frame work on a batch of frames; one Triton call per step for the whole batch."""

    def __init__(
        self, triton: TritonClient, options: SwapOptions = SwapOptions(), max_pixels: int = DEFAULT_MAX_PIXELS
    ):
        self.triton = triton
        self.options = options
        self.max_pixels = max_pixels  # the largest image read as a source, reference or target
        self.times = StageTimes()
        self.masker = FaceMasker(triton, options)

    @cached_property
    def boost(self) -> int:
        """The pixel boost's k: faces are aligned at k times the swapper's crop size."""
        return pixel_boost(self.triton, self.options)

    def read(self, path: Path) -> Picture:
        return read_image(path, self.max_pixels)

    def find_faces(self, frames: list[Frame]) -> list[list[Face]]:
        """Faces of each frame, best score first, at each of `detector_angles`; one detector call."""
        angles = parse_angles(self.options.detector_angles)
        if angles == (0,):
            return self._find_upright(frames)
        return find_at_angles(self._find_upright, frames, angles)

    def _find_upright(self, frames: list[Frame]) -> list[list[Face]]:
        if not frames:
            return []
        detector = self.triton.detector_input
        with self.times.measure("detect"):
            canvases = np.zeros((len(frames), *detector.canvas([f.shape for f in frames]), 3), np.uint8)
            scales = [letterbox(f, canvas, detector.size) for f, canvas in zip(frames, canvases, strict=True)]
            found = self.triton.detect(canvases, self.options.score_threshold)
            return [faces_of(found, i, scale) for i, scale in enumerate(scales)]

    def embed_faces(self, frames: list[Frame], faces: list[list[Face]]) -> None:
        """Give every face its identity embeddings (unit and raw), with one batched call for all frames."""
        size = self.triton.crop_size("face_embed")
        with self.times.measure("embed"):
            pairs = [(face, frame) for frame, found in zip(frames, faces, strict=True) for face in found]
            crops = [warp_face(frame, face.landmarks, template_for(size), size)[0] for face, frame in pairs]
            if crops:
                units, raws = self.triton.embed(np.stack(crops))
                for (face, _), unit, raw in zip(pairs, units, raws, strict=True):
                    face.embedding, face.raw_embedding = unit, raw

    def find_portrait_faces(self, frames: list[Frame]) -> tuple[list[Frame], list[list[Face]]]:
        """Faces of photos that may be tight face crops, which SCRFD misses when a face fills the frame.

        A photo without faces is tried again inside a black border half its size wide, made smaller
        first when it is large (a face filling it is large too); that photo is returned with the faces
        found in it.
        """
        found = self.find_faces(frames)
        frames = list(frames)
        for i, (frame, faces) in enumerate(zip(frames, found, strict=True)):
            if not faces:
                scale = PORTRAIT_SIDE / max(frame.shape[:2])
                if scale < 1:
                    frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                border = max(frame.shape[:2]) // 2
                padded = cv2.copyMakeBorder(frame, border, border, border, border, cv2.BORDER_CONSTANT)
                faces = self.find_faces([padded])[0]
                if faces:
                    frames[i], found[i] = padded, faces
        return frames, found

    def identity(self, sources: list[Path]) -> Identity:
        """One identity from the largest face of each source image; InputError naming a faceless one (or
        refusing a pixel boost the swapper cannot take, before any work).

        Sources are decoded one at a time and each is dropped once its face is embedded, so memory holds
        one source image however many there are.
        """
        pixel_boost(self.triton, self.options)  # a boost the swapper cannot take is refused before any work
        embeddings, raws = [], []
        for path in sources:
            (frame,), (faces,) = self.find_portrait_faces([self.read(path).frame])
            if not faces:
                raise InputError(f"{Path(path).name}: no face found in this source image")
            largest = [order_faces(faces)[0]]
            self.embed_faces([frame], [largest])
            embeddings.append(largest[0].embedding)
            raws.append(largest[0].raw_embedding)
            del frame  # before the next source is decoded
        embedding, raw = average_identity(np.stack(embeddings)), mean_embedding(np.stack(raws))
        model = self._models["swapper"]
        if self.options.swap_weight != NEUTRAL_SWAP_WEIGHT and model.weight_target not in WEIGHT_TARGETS:
            raise InputError(
                f"swap_weight needs a swapper whose source is an identity embedding; {model.model} "
                f"({model.family}) has the source {model.source!r}"
            )
        if model.source == "image":
            return Identity(embedding, raw, self._source_crop(sources[0], model))
        return Identity(embedding, raw, self.triton.latent(raw, model.latent_model))

    @cached_property
    def _models(self) -> dict[str, ServedModel]:
        """The swapper and enhancer the options choose among those served (an enhancer named without
        `enhance` is still checked)."""
        wanted = self.options.enhance or self.options.enhancer is not None
        return {
            "swapper": choose(self.triton, "swapper", self.options.swapper),
            "enhancer": choose(self.triton, "enhancer", self.options.enhancer) if wanted else None,
        }

    def _source_crop(self, source: Path, model: ServedModel) -> Crop:
        """The aligned crop of the first source's largest face, for families whose source is an image."""
        (frame,), (faces,) = self.find_portrait_faces([self.read(source).frame])
        landmarks = order_faces(faces)[0].landmarks
        return warp_face(frame, landmarks, model.source_template, model.source_size)[0]

    def reference(self, name: str, frame: Frame) -> Embedding:
        """The reference identity: the face `face_order`/`face_index` picks in a reference image or frame."""
        options = self.options
        (frame,), (found,) = self.find_portrait_faces([frame])
        faces = select_faces(found, "one", order=options.face_order, index=options.face_index)
        if not faces:
            raise InputError(f"{name}: no face found to use as the reference")
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
                order=options.face_order,
                index=options.face_index,
                reference=reference,
                distance=options.reference_distance,
            )
            for found in faces
        ]

    def _crop_infer_paste(
        self, sources: list[Frame], destinations: list[Frame], faces: list[list[Face]], step: CropStep
    ) -> None:
        """Crop every face from `sources`, run one Triton call on all crops, paste into `destinations`."""
        with self.times.measure("align"):
            jobs = [
                (source, destination, face, *warp_face(source, face.landmarks, step.template, step.size))
                for source, destination, found in zip(sources, destinations, faces, strict=True)
                for face in found
            ]
        if not jobs:
            return
        sources, destinations, found, crops, matrices = (list(column) for column in zip(*jobs, strict=True))
        crops = np.stack(crops)
        with self.times.measure(step.stage):
            results = step.infer(crops)
        with self.times.measure("mask"):
            masks = self.masker.masks(sources, found, crops, matrices)
        with self.times.measure("paste"):
            for destination, crop, matrix, mask in zip(destinations, results, matrices, masks, strict=True):
                step.place(destination, crop, matrix, mask)

    def swap_frames(self, frames: list[Frame], faces: list[list[Face]], identity: Identity) -> list[Frame]:
        """Copies of `frames` with their `faces` swapped to `identity` (and enhanced if asked)."""
        results = [frame.copy() for frame in frames]
        model = self._models["swapper"]
        size = self.triton.crop_size(model.ensemble)
        self.masker.check()
        latents = self.face_latents(frames, faces, identity)

        def place(frame: Frame, crop: Crop, matrix: Matrix, mask: Mask) -> None:
            if self.options.mask == "insightface":
                paste_back_insightface(frame, crop, matrix)
            else:
                paste_back(frame, crop, mask, matrix)

        def swap(crops: np.ndarray) -> np.ndarray:
            return swap_boosted(partial(self.triton.swap, model=model.ensemble), crops, latents, self.boost)

        step = CropStep("swap", model.template or template_for(size), size * self.boost, swap, place)
        self._crop_infer_paste(frames, results, faces, step)
        if self.options.enhance:
            enhancer = self._models["enhancer"]
            size = self.triton.crop_size(enhancer.ensemble)
            share = self.options.enhance_blend / 100

            def blend_in(frame: Frame, crop: Crop, matrix: Matrix, mask: Mask) -> None:
                paste_back(frame, crop, mask * share, matrix)

            template = enhancer.template or ENHANCE_TEMPLATE

            def enhance(crops: np.ndarray) -> np.ndarray:
                return self.triton.enhance(crops, self.options.enhance_weight, enhancer.ensemble)

            step = CropStep("enhance", template, size, enhance, blend_in)
            self._crop_infer_paste(results, results, faces, step)
        return results

    def face_latents(self, frames: list[Frame], faces: list[list[Face]], identity: Identity) -> np.ndarray:
        """The latent each face is swapped to, [faces, D] in frame and face order: the identity's at the
        neutral `swap_weight`; else the identity's latent mixed with each face's embedding (the family's
        `weight_target`), after one batched call for the faces' embeddings still missing."""
        count = sum(map(len, faces))
        weight = self.options.swap_weight
        if weight == NEUTRAL_SWAP_WEIGHT or count == 0:
            return np.broadcast_to(identity.latent, (count, *identity.latent.shape))
        target = self._models["swapper"].weight_target  # a Face field (checked in `identity`)
        missing = [[face for face in found if getattr(face, target) is None] for found in faces]
        self.embed_faces(frames, missing)
        targets = np.stack([getattr(face, target) for found in faces for face in found])
        return balanced_latents(identity.latent, targets, weight)

    def process(
        self, frames: list[Frame], identity: Identity, reference: Embedding | None
    ) -> tuple[list[Frame], int, int]:
        """Detect, select and swap a batch of frames: (result frames, faces found, faces swapped)."""
        found = self.find_faces(frames)
        selected = self.select(frames, found, reference)
        return self.swap_frames(frames, selected, identity), sum(map(len, found)), sum(map(len, selected))


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
        raise InputError(f"{path.name}: not an image or a video this service reads ({reason})") from error
    return "video"


def reference_embedding(
    swapper: FaceSwapper,
    reference: Path | None,
    video: VideoInfo | None = None,
    reference_frame: int | None = None,
) -> Embedding | None:
    """The identity the reference selector looks for: from a reference image, else a target video frame.

    None when the selector is not `reference`; InputError when it is and neither is given.
    """
    if swapper.options.selector != "reference":
        return None
    if reference is not None:
        return swapper.reference(Path(reference).name, swapper.read(reference).frame)
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
