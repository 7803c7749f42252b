"""What a web process loads as it starts: the statistics libraries wait until a page needs them (idle memory)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
import larry_web.wsgi
from django.urls import get_resolver
get_resolver().url_patterns  # every view module, as the first request loads them
print(json.dumps(sorted(m for m in ("scipy", "sklearn", "ppi_py", "pandas", "mapie", "openai") if m in sys.modules)))
"""


def test_a_web_process_starts_without_scipy_scikit_learn_or_ppi_py(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'probe.sqlite3'}"}
    env.pop("CELERY_BROKER_URL", None)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
