"""The options of a swap: names, bounds, defaults and help in one place.

`SwapOptions` and `VideoOptions` are what the pipeline takes; the CLI builds its flags from their
fields (`face_order` becomes `--face-order`) and the API's forms extend them, so all three accept the
same names and values and refuse the same ones with the same message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.choices import (
    DEFAULT_PRESET,
    MASKS,
    VIDEO_CONTAINERS,
    EncoderPreset,
    FaceOrder,
    PixelBoost,
    Selector,
    VideoCodec,
)
from orchestrator.errors import InputError
from orchestrator.faces.blend import DEFAULT_MASK_BLUR
from orchestrator.faces.detect import DEFAULT_SCORE_THRESHOLD
from orchestrator.faces.identity import NEUTRAL_SWAP_WEIGHT
from orchestrator.faces.masks import AREAS, REGIONS
from orchestrator.faces.rotate import parse_angles
from orchestrator.faces.select import DEFAULT_REFERENCE_DISTANCE
from orchestrator.faces.track import DEFAULT_TRACK_GAP
from orchestrator.images import DEFAULT_JPEG_QUALITY

if TYPE_CHECKING:
    from fastapi.exceptions import RequestValidationError


MAX_OPTION_TEXT = 512  # characters of a text option (a list of names at most)


class SwapOptions(BaseModel):
    """How faces are found, chosen, swapped and blended; the same for images and videos."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, str_max_length=MAX_OPTION_TEXT)

    selector: Selector = Field(
        "many", description="many: every face; one: one face; reference: the faces like the reference"
    )
    face_order: FaceOrder = Field("largest", description="the order `one` picks from")
    face_index: int = Field(0, ge=0, le=10_000, description="position in the face order for `one`")
    reference_distance: float = Field(
        DEFAULT_REFERENCE_DISTANCE, gt=0, le=2, description="largest cosine distance for `reference`"
    )
    mask: str = Field(
        "box",
        description="paste-back masks, comma-separated, combined by minimum: box, occlusion (needs the "
        "occluder), region (the parser), area (the landmarker); or insightface alone",
    )
    mask_blur: float = Field(DEFAULT_MASK_BLUR, ge=0, le=1, description="feather of the box mask")
    enhance: bool = Field(False, description="run the face enhancer after the swap")
    enhance_blend: int = Field(80, ge=0, le=100, description="percent of the enhanced face in the result")
    swapper: str | None = Field(
        None, max_length=200, description="a served swapper by name (GET /v1/models); default: the first"
    )
    enhancer: str | None = Field(
        None, max_length=200, description="a served enhancer by name (GET /v1/models); default: the first"
    )
    enhance_weight: float = Field(
        0.5, ge=0, le=1, description="fidelity weight of enhancers that take one (CodeFormer)"
    )
    score_threshold: float = Field(
        DEFAULT_SCORE_THRESHOLD,
        ge=0.1,
        lt=1,
        description="face detection score threshold (lower: thousands of false faces)",
    )
    jpeg_quality: int = Field(DEFAULT_JPEG_QUALITY, ge=1, le=100, description="JPEG and WebP result quality")
    # pixel boost and identity weight (orchestrator.faces.boost, orchestrator.faces.identity)
    pixel_boost: PixelBoost | None = Field(
        None,
        description="swap faces aligned at this size, as k² interleaved crops of the swapper's size "
        "(a multiple of it); default: the swapper's size",
    )
    swap_weight: float = Field(
        NEUTRAL_SWAP_WEIGHT,
        ge=0,
        le=1,
        description="identity weight: below 0.5 keeps more of the target face, above more of the source",
    )

    @field_validator("pixel_boost", mode="before")
    @classmethod
    def _boost_from_text(cls, value):
        """Form fields arrive as text: "512" is the choice 512."""
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    # --- masks beyond the box (orchestrator.faces.masks, orchestrator.masking)
    mask_padding: str = Field(
        "0,0,0,0", description="box mask padding T,R,B,L in percent of the crop (0..100)"
    )
    regions: str = Field(
        ",".join(REGIONS), description=f"region mask: the parsed regions swapped, of {', '.join(REGIONS)}"
    )
    areas: str = Field(",".join(AREAS), description=f"area mask: the areas swapped, of {', '.join(AREAS)}")
    mouth_mask: bool = Field(False, description="keep the target's own mouth (needs the landmarker)")
    mouth_mask_size: int = Field(
        10, ge=0, le=100, description="mouth mask: how far the kept mouth reaches, percent of its width"
    )
    mouth_mask_feather: int = Field(
        30, ge=0, le=100, description="mouth mask: width of its soft edge, percent of the mouth's width"
    )

    @field_validator("mask")
    @classmethod
    def _masks_known(cls, value: str) -> str:
        names = _names(value, MASKS, "mask")
        if "insightface" in names and len(names) > 1:
            raise ValueError("the insightface mask does not combine with others")
        return ",".join(names)

    @field_validator("regions")
    @classmethod
    def _regions_known(cls, value: str) -> str:
        return ",".join(_names(value, tuple(REGIONS), "region"))

    @field_validator("areas")
    @classmethod
    def _areas_known(cls, value: str) -> str:
        return ",".join(_names(value, tuple(AREAS), "area"))

    @field_validator("mask_padding")
    @classmethod
    def _padding_in_range(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 4 or not all(p.isdigit() and int(p) <= 100 for p in parts):
            raise ValueError("give four percentages 0..100, top,right,bottom,left (e.g. 10,0,0,0)")
        return ",".join(str(int(p)) for p in parts)

    @model_validator(mode="after")
    def _mouth_mask_needs_our_paste_back(self) -> SwapOptions:
        if self.mouth_mask and self.mask == "insightface":
            raise ValueError("the mouth mask does not combine with the insightface mask")
        return self

    @property
    def processors(self) -> tuple[str, ...]:
        """The processors these options run, in the order they run (FaceFusion's)."""
        asked = {"face_swapper": True, "face_enhancer": self.enhance}
        return tuple(name for name, wanted in asked.items() if wanted)

    @property
    def masks(self) -> tuple[str, ...]:
        return tuple(self.mask.split(","))

    @property
    def padding(self) -> tuple[int, int, int, int]:
        top, right, bottom, left = (int(p) for p in self.mask_padding.split(","))
        return top, right, bottom, left

    # --- faces at other angles (orchestrator.faces.rotate)
    detector_angles: str = Field(
        "0", description="detection passes, degrees clockwise, merged: any of 0,90,180,270 (e.g. 0,90,270)"
    )

    @field_validator("detector_angles")
    @classmethod
    def _angles(cls, value: str) -> str:
        return ",".join(map(str, parse_angles(value)))


def _names(value: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma-separated list of known names, duplicates dropped; ValueError naming an unknown one."""
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(
            f"unknown {what} {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(known)}"
        )
    return names


class VideoOptions(BaseModel):
    """What applies when the target is a video: the part processed, the reference frame, the encoder."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False, str_max_length=MAX_OPTION_TEXT)

    reference_frame: int | None = Field(None, ge=0, description="video: take the reference face from frame N")
    start: float | None = Field(None, ge=0, description="video: seconds where processing starts")
    end: float | None = Field(None, gt=0, description="video: seconds where processing ends")
    video_codec: VideoCodec | None = Field(None, description="video encoder (default: the container's)")
    crf: int = Field(18, ge=0, le=51, description="video quality, lower is better")
    preset: EncoderPreset = Field(
        DEFAULT_PRESET, description="encoder speed preset; veryfast costs half of medium"
    )
    # --- faces tracked across frames (orchestrator.faces.track, orchestrator.tracking)
    tracking: bool = Field(
        False, description="video: follow faces across frames and swap them where the detector misses them"
    )
    track_gap: int = Field(
        DEFAULT_TRACK_GAP, ge=1, le=30, description="video: most frames in a row a tracked face is filled in"
    )
    landmark_smoothing: float = Field(
        0.0, ge=0, le=0.95, description="video: weight of a tracked face's previous landmarks, against jitter"
    )

    @model_validator(mode="after")
    def _window(self) -> VideoOptions:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("`end` must come after `start`")
        return self

    def codec_problem(self, container: str) -> str | None:
        """Why the chosen codec cannot go into `container` (mp4, mkv, ...), or None when it can."""
        codecs = VIDEO_CONTAINERS[container].codecs
        if self.video_codec is not None and codecs is not None and self.video_codec not in codecs:
            return f"a {container} result needs the {' or '.join(codecs)} codec"
        return None


def validation_message(error: ValidationError | RequestValidationError, skip: int = 0) -> str:
    """One readable line per problem, naming the field; only short scalar inputs are echoed.

    `skip` drops leading location parts (FastAPI's "body").
    """
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"][skip:]) or "options"
        given = item.get("input")
        shown = f" (got {given!r})" if isinstance(given, str | int | float) and len(str(given)) <= 40 else ""
        problems.append(f"{field}: {item['msg'].removeprefix('Value error, ')}{shown}")
    return "; ".join(problems)


def parse_options(model: type[BaseModel], values: dict) -> BaseModel:
    """`model(**values)`, with a refusal as one InputError line instead of pydantic's report."""
    try:
        return model(**values)
    except ValidationError as error:
        raise InputError(validation_message(error)) from None
