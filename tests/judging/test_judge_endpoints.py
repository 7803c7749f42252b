"""A judge endpoint's URL: any http(s) URL with a host, a docker service name included, never credentials."""

import pytest
from django.core.exceptions import ValidationError

from annotations.models import validate_no_credentials
from judging.models import validate_judge_url


@pytest.mark.parametrize("url", ["http://vllm:8000/v1", "https://llm.example.com/v1", "http://127.0.0.1:8011/v1"])
def test_a_service_name_or_a_full_host_is_a_judge_url(url):
    validate_judge_url(url)


@pytest.mark.parametrize("url", ["vllm:8000/v1", "ftp://vllm/v1", "http://", "http://vllm:port/v1", "http://a b/v1"])
def test_what_is_not_an_http_url_with_a_host_is_refused(url):
    with pytest.raises(ValidationError):
        validate_judge_url(url)


def test_credentials_in_the_url_are_refused():
    with pytest.raises(ValidationError, match="API key field"):
        validate_no_credentials("http://user:sk-secret@vllm:8000/v1")
