"""The Host, Origin and content-type checks on their own, for each way a server may listen."""

from __future__ import annotations

import pytest

from paragrad.serving.config import ServeConfig
from paragrad.serving.guard import Guard, check_content_type
from paragrad.serving.tensors import RequestError


@pytest.mark.parametrize(
    ("settings", "taken", "refused"),
    [
        ({}, ["127.0.0.1:8000", "localhost", "127.0.0.2", "[::1]:8000"], ["evil.example", "10.0.0.5"]),
        ({"host": "localhost"}, ["localhost:80", "127.0.0.1"], ["evil.example", "10.0.0.5"]),
        ({"host": "0.0.0.0", "insecure": True}, ["10.0.0.5:8000", "localhost"], ["evil.example"]),
        (
            {"host": "10.0.0.5", "insecure": True},
            ["10.0.0.5:8000"],
            ["10.0.0.6", "localhost", "evil.example"],
        ),
        ({"host": "models.lan", "insecure": True}, ["models.lan:8000", "10.0.0.5"], ["evil.example"]),
        ({"allow_host": ("models.lan",)}, ["models.lan:8000", "127.0.0.1"], ["evil.example"]),
        ({"allow_host": ("*",)}, ["evil.example"], []),
        ({"token": "t"}, ["evil.example"], []),
    ],
)
def test_the_host_must_name_the_server_unless_a_token_is_required(settings, taken, refused):
    guard = Guard(ServeConfig(**settings))
    for host in taken:
        guard.check(host, None)
    for host in refused:
        with pytest.raises(RequestError, match="does not name this server") as caught:
            guard.check(host, None)
        assert caught.value.status == 403


def test_an_origin_must_be_the_servers_own_or_given_with_cors():
    guard = Guard(ServeConfig(cors=("https://app.example",)))
    guard.check("127.0.0.1:8000", "http://127.0.0.1:8000")
    guard.check("127.0.0.1:8000", "https://app.example")
    assert guard.cors_origin("https://app.example") == "https://app.example"
    for origin in ("https://evil.example", "null", "http://127.0.0.1:9000"):
        with pytest.raises(RequestError, match="--cors ORIGIN"):
            guard.check("127.0.0.1:8000", origin)
    assert Guard(ServeConfig()).cors_origin("https://app.example") is None


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_forms_and_text_are_not_inference_bodies(kind):
    with pytest.raises(RequestError, match="application/json") as caught:
        check_content_type(kind, binary=False)
    assert caught.value.status == 415
    check_content_type("application/json; charset=utf-8", binary=False)
    check_content_type(None, binary=False)
    check_content_type("application/octet-stream", binary=True)
    with pytest.raises(RequestError):
        check_content_type("application/octet-stream", binary=False)
