"""What the routes work with, built once per app and reached through a dependency."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import Depends, Request

from orchestrator.api.live_protocol import LiveSessions
from orchestrator.jobs.store import JobStore
from orchestrator.jobs.workers import WorkerPool
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient
from orchestrator.triton_health import TritonHealth


@dataclass
class Services:
    settings: Settings
    store: JobStore
    triton: TritonClient
    pool: WorkerPool
    metrics: Metrics
    scratch: Path  # per-request folders of the synchronous swap
    sync_limit: anyio.CapacityLimiter  # synchronous swaps processed at once
    live: LiveSessions  # the process's live WebSocket sessions
    live_openings: anyio.CapacityLimiter  # live connections waiting for their opening (unauthenticated)
    health: TritonHealth  # whether Triton can take work now


def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]
