"""Multipart routes refuse what they would once have ignored: unknown fields (with a suggestion) and
bodies that are not multipart. Real HTTP to a real service; nothing is stored for a refused request."""

from __future__ import annotations

import pytest

from tests.helpers.service import Service, problem, upload


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory):
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("strict") / "data", {}).start()
    yield service
    service.close()


@pytest.mark.parametrize(
    ("path", "files", "fields", "expected"),
    [
        ("/v1/swap", upload(), {"selecter": "one"}, "unknown field 'selecter' (did you mean 'selector'?)"),
        ("/v1/jobs", upload(), {"crff": "20"}, "unknown field 'crff' (did you mean 'crf'?)"),
        ("/v1/faces", upload(source=None), {"score_treshold": "0.5"}, "(did you mean 'score_threshold'?)"),
        ("/v1/swap", upload(), {"zzzz": "1"}, "unknown field 'zzzz'; /v1/swap's fields are listed at /docs"),
    ],
)
def test_unknown_fields_are_refused_with_a_suggestion(service, path, files, fields, expected):
    before = service.job_folders() if (service.data_dir / "jobs").is_dir() else set()
    problem(service.http.post(path, files=files, data=fields), 422, expected)
    assert (service.job_folders() if (service.data_dir / "jobs").is_dir() else set()) == before
    assert service.scratch_files() == []


def test_the_same_request_with_known_fields_swaps(service):
    response = service.http.post("/v1/swap", files=upload(), data={"selector": "one"})
    assert response.status_code == 200, response.text
    assert response.headers["x-faces-swapped"] == "1"


@pytest.mark.parametrize("path", ["/v1/swap", "/v1/jobs", "/v1/faces"])
def test_a_json_body_on_a_multipart_route_says_how_to_send_it(service, path):
    response = service.http.post(path, json={"source": "me.jpg", "target": "photo.jpg"})
    problem(response, 422, f"{path} takes multipart/form-data, not application/json", "curl -F target=@")
