"""The service tests that concern jobs, again with the job store on a real PostgreSQL server.

The test functions are `tests/test_service.py`'s own, collected here a second time: their fixtures
below start the service with `FACESWAP_DATABASE_URL` (a fresh database per test or module) and a
short job lease, so a job killed with its process runs again seconds later, as another replica
would run it.
"""

from __future__ import annotations

import pytest

from tests.helpers.service import Service, started_services
from tests.test_service import (  # noqa: F401 (collected here with this module's fixtures)
    test_a_gracefully_stopped_service_keeps_its_queued_jobs,
    test_a_killed_service_resumes_its_running_job,
    test_delete_cancels_queued_and_running_jobs,
    test_delete_removes_a_finished_job,
    test_finished_jobs_expire_after_the_retention_period,
    test_image_job_runs_to_a_result,
    test_list_jobs_pages_newest_first_and_filters_by_state,
    test_metrics,
    test_readyz_lists_every_model_ready,
    test_video_job_runs_to_a_result,
)

LEASE = 3  # seconds


@pytest.fixture(scope="module")
def service(triton, postgres, tmp_path_factory):
    """The shared instance, default settings, jobs in PostgreSQL."""
    env = {"database_url": postgres.new_database(), "job_lease_seconds": LEASE}
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("service") / "data", env).start()
    try:
        yield service
        service.assert_no_internal_error()
    finally:
        service.close()


@pytest.fixture
def start_service(triton, postgres, tmp_path):
    """Dedicated instances on one database per test (as test_service's `start_service`)."""
    defaults = {"database_url": postgres.new_database(), "job_lease_seconds": LEASE}
    with started_services(triton.grpc_url, tmp_path, **defaults) as start:
        yield start
