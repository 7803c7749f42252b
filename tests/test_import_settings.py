"""The import's settings: where uploads go, the largest field, the largest REST import answered in the request,
from the environment, parsed strictly."""

import json
import os
import subprocess
import sys

from tests.test_settings import ROOT, VARIABLES

PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'media': str(s.MEDIA_ROOT), 'max_field': s.LARRY_IMPORT_MAX_FIELD_BYTES, "
    "'inline': s.LARRY_IMPORT_INLINE_MAX_BYTES}))"
)


def probe(**env):
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "DJANGO_SETTINGS_MODULE": "larry_web.settings", **env},
    )


def test_uploads_go_to_media_fields_may_be_1_mib_and_rest_imports_over_64_mib_are_jobs_unless_told():
    got = json.loads(
        probe(LARRY_MEDIA_ROOT="", LARRY_IMPORT_MAX_FIELD_BYTES="", LARRY_IMPORT_INLINE_MAX_BYTES="").stdout
    )
    assert got == {"media": str(ROOT / "media"), "max_field": 1_048_576, "inline": 64 * 1024 * 1024}
    got = json.loads(
        probe(
            LARRY_MEDIA_ROOT="/srv/uploads", LARRY_IMPORT_MAX_FIELD_BYTES="4096", LARRY_IMPORT_INLINE_MAX_BYTES="0"
        ).stdout
    )
    assert got == {"media": "/srv/uploads", "max_field": 4096, "inline": 0}


def test_a_malformed_or_tiny_field_limit_stops_start_up_naming_the_variable():
    assert "LARRY_IMPORT_MAX_FIELD_BYTES='1MB' is not an integer" in probe(LARRY_IMPORT_MAX_FIELD_BYTES="1MB").stderr
    assert "LARRY_IMPORT_MAX_FIELD_BYTES=10 is below 1024" in probe(LARRY_IMPORT_MAX_FIELD_BYTES="10").stderr
    assert "LARRY_IMPORT_INLINE_MAX_BYTES='64M' is not an integer" in probe(LARRY_IMPORT_INLINE_MAX_BYTES="64M").stderr
    assert "LARRY_IMPORT_INLINE_MAX_BYTES=-1 is below 0" in probe(LARRY_IMPORT_INLINE_MAX_BYTES="-1").stderr
