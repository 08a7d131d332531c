"""A request's options resolved once against what Triton serves: the plan every path runs.

`resolve_plan` is the one place a request meets the model plane before any work: the swapper and
enhancer it names (or the defaults), the pixel boost the swapper's crop size allows, whether its
family takes `swap_weight`, the mask models its masks need, and the processors in their order. The
CLI, the routes and the job runner all call it, so a request is refused the same way everywhere,
before any file is read or any job queued.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelplane import contract
from orchestrator.errors import InputError
from orchestrator.faces.boost import boost_factor
from orchestrator.faces.identity import NEUTRAL_SWAP_WEIGHT
from orchestrator.masking import check_mask_models, mask_kinds
from orchestrator.options import SwapOptions
from orchestrator.served import ServedModel, choose
from orchestrator.triton import TritonClient


@dataclass(frozen=True)
class Plan:
    """What a request runs: its options, the served models it uses and its processors in order."""

    options: SwapOptions
    swapper: ServedModel
    enhancer: ServedModel | None  # when the options enhance, or name an enhancer (checked either way)
    boost: int  # the pixel boost's k: faces aligned at k times the swapper's crop size
    processors: tuple[str, ...]


def resolve_plan(triton: TritonClient, options: SwapOptions) -> Plan:
    """The plan of `options` on this Triton; InputError (or MissingModel) naming what it cannot serve,
    TritonError when Triton cannot be asked."""
    swapper = choose(triton, "swapper", options.swapper)
    wanted = options.enhance or options.enhancer is not None
    enhancer = choose(triton, "enhancer", options.enhancer) if wanted else None
    boost = boost_factor(options.pixel_boost, swapper.size)
    if options.swap_weight != NEUTRAL_SWAP_WEIGHT and swapper.weight_target not in contract.WEIGHT_TARGETS:
        raise InputError(
            f"swap_weight needs a swapper whose source is an identity embedding; {swapper.model} "
            f"({swapper.family}) has the source {swapper.source!r}"
        )
    check_mask_models(triton, mask_kinds(options))
    return Plan(options, swapper, enhancer, boost, options.processors)
