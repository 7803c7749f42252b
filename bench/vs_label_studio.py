"""Benchmark: Larry and Label Studio 1.23.2 side by side, interleaved rounds on fresh databases, over HTTP.

Usage (from the project folder; PostgreSQL on 127.0.0.1:5432 with trust auth and Redis on 6379, as on our machines):

    .venv/bin/python bench/vs_label_studio.py --install-label-studio [--items 50000] [--rounds 3] [--reviews 200]
    .venv/bin/python bench/vs_label_studio.py --growth [--sizes 10000,100000,1000000]

``--install-label-studio [DIR]`` first installs ``label-studio==1.23.2`` into a scratch virtualenv
(``~/.cache/larry-bench/ls-venv`` unless DIR is given; never into the project's requirements or .venv);
later runs find it there (``--ls-venv DIR``).

Each round, in an order rotated from round to round, serves each system on 127.0.0.1 from a fresh
database and measures it with the same client code (``http.client``, one keep-alive connection):

- **Label Studio** on its own dev server (``label-studio start --no-browser``), with a fresh data dir and
  its embedded SQLite (``--ls-postgresql`` adds a run on a fresh PostgreSQL database through its
  ``DJANGO_DB=default``, ``POSTGRE_*`` variables);
- **Larry on PostgreSQL** as the README's production setup starts it: gunicorn as ``make serve`` does
  (2 workers) and a Celery worker (``celery -A larry_web worker``) on Redis (``--redis-url``), own fresh
  database ``<DATABASE_URL's name>_bench_vsls`` (see common.py);
- **Larry on SQLite**, the embedded default (``make serve``: gunicorn, no broker, tasks in-process), on a
  fresh file.

Measured per system and round (``--items`` N items sampled, seeded, from the shared data, each with its
``human_label`` as a prior label for Larry but every ``--unlabelled-every``-th, which the SMEs review; the
same rows as Label Studio tasks):

- ``idle_rss_mb``: RSS summed over every process the system starts (Larry: gunicorn master + workers,
  and the Celery master + pool processes on PostgreSQL; Label Studio: its processes), a few seconds
  after it answers HTTP (``--settle``); ``idle_pss_mb`` the same as PSS (shared pages counted once).
- ``import_s``: from sending the upload (multipart, one file) until every item is gated (Larry: the
  project page's funnel shows N imported and none "not yet gated", polled every ``--poll`` s) or, for
  Label Studio, which has no gate, until the project counts N tasks; ``import_queryable_s``: until the
  upload is answered and the items are queryable.
- ``export_items_per_s``: right after the import (no waiting for autovacuum or ``ANALYZE``), items over
  the seconds to read the whole export: Larry's accepted set (``/api/projects/<slug>/export/chat.jsonl``,
  streamed), Label Studio's ``/api/projects/<id>/export?exportType=JSON&download_all_tasks=true``. The
  content differs, so items per second is what compares. Larry's is read again after the review loop
  (``export_items_per_s_later``).
- ``queue_s`` (Larry): queueing every item for the SMEs (``POST /api/projects/<slug>/samples/``, uniform, with
  ``Prefer: respond-async``: answered 202 at once, the draw polled every ``--poll`` s until done).
- the review loop, ``--reviews`` items: Label Studio's label stream (``GET /api/projects/<id>/next``, then
  ``POST /api/tasks/<id>/annotations/``): ``item_*_ms`` is next + submit, ``submit_*_ms`` the POST;
  Larry's review screen as the browser (htmx) drives it: ``POST /projects/<slug>/review/<id>/`` stores
  the decision and answers with the next item's card, so that one request is both ``submit`` and
  ``item`` (next + submit).

The summary takes the median over rounds of each per-round figure; ratios are Larry's speed over
Label Studio's (5: five times as fast), ``idle_rss_ratio`` Larry's memory over Label Studio's. The last
line of output is one JSON object: the ratios for Larry on PostgreSQL, the same with ``_sqlite``, and
every per-round figure under ``rounds``.

``--growth`` measures Larry alone on PostgreSQL (database ``..._bench_vsls_growth``) at each of ``--sizes``:
import until gated, export, queueing every item, and the review loop; cost per item in microseconds, to see
whether it is flat. Its imports are sent with ``Prefer: respond-async`` at every size, so that every size
takes the same path (a file over ``LARRY_IMPORT_INLINE_MAX_BYTES`` would become a job anyway): answered 202
at once (``import_answered_s``), ``import_queryable_s`` until the import job's status is done (polled),
``import_s`` until the funnel shows every item gated.
"""

import argparse
import http.client
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from common import ROOT, database_name, database_url, percentile, recreate_database, write_items

LS_VERSION = "1.23.2"
DEFAULT_LS_VENV = Path.home() / ".cache" / "larry-bench" / "ls-venv"
LS_LABEL_CONFIG = (
    '<View><Text name="prompt" value="$prompt"/><Text name="response" value="$response"/>'
    '<Choices name="label" toName="response"><Choice value="accept"/><Choice value="reject"/></Choices></View>'
)
LARRY_USER, LARRY_PASSWORD = "bench", "bench-password-1234"
SYSTEMS = ("label_studio", "larry_pg", "larry_sqlite")


# ---------------------------------------------------------------------------------------------------------
# The one HTTP client both systems get


class Client:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:``port`` with a cookie jar and optional default headers."""

    def __init__(self, port: int, headers: dict | None = None, timeout: float = 3600) -> None:
        self.port, self.timeout = port, timeout
        self.headers = dict(headers or {})
        self.cookies: dict[str, str] = {}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def open(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """Send a request; the ``http.client.HTTPResponse`` (cookies taken). A GET is sent again once on a dropped
        connection; any other request is not (it may have been acted on), so its failure raises SystemExit."""
        sent = {**self.headers, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=sent)
                response = self.conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt == 2 or method != "GET":
                    raise SystemExit(
                        f"{method} {path} on port {self.port}: the server dropped the connection ({exc!r})"
                    ) from exc
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, ok=(200, 201)):
        """``(body bytes, seconds)``; raises SystemExit naming the request on a status not in ``ok``."""
        started = time.perf_counter()
        response = self.open(method, path, body, headers)
        data = response.read()
        seconds = time.perf_counter() - started
        if response.status not in ok:
            raise SystemExit(f"{method} {path} on port {self.port}: {response.status} {data[:500]!r}")
        return data, seconds

    def json(self, method: str, path: str, payload=None, ok=(200, 201)):
        body = None if payload is None else json.dumps(payload).encode()
        data, _ = self.call(method, path, body, {"Content-Type": "application/json"} if body else None, ok)
        return json.loads(data) if data else None

    def stream_lines(self, path: str) -> tuple[int, int, float]:
        """GET ``path`` read in 64 KiB blocks: ``(bytes, newline count, seconds)``."""
        started = time.perf_counter()
        response = self.open("GET", path)
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {response.read()[:500]!r}")
        size = lines = 0
        while block := response.read1(65536):
            size += len(block)
            lines += block.count(b"\n")
        return size, lines, time.perf_counter() - started

    def close(self) -> None:
        self.conn.close()


def multipart(field: str, path: Path, content_type: str) -> tuple[object, dict]:
    """A multipart/form-data body with the file at ``path`` (read in 1 MiB blocks as it is sent, so a
    large file is never whole in memory), and its headers (Content-Type, Content-Length)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def blocks():
        yield head
        with path.open("rb") as source:
            while block := source.read(1 << 20):
                yield block
        yield tail

    length = len(head) + path.stat().st_size + len(tail)
    return blocks(), {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(length)}


def wait_http(port: int, path: str, process: subprocess.Popen, seconds: float = 300) -> float:
    """Poll ``path`` until it answers 200 (or 302); the seconds it took. Raises if ``process`` dies or time runs out."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {process.returncode} before answering")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status in (200, 302):
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > seconds:
            raise SystemExit(f"nothing answered on port {port} within {seconds} s")
        time.sleep(0.25)


# ---------------------------------------------------------------------------------------------------------
# Processes and their memory


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and all their descendants that are alive."""
    tree, seen, todo = _children(), [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen and Path(f"/proc/{pid}").exists():
            seen.append(pid)
            todo.extend(tree.get(pid, []))
    return seen


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """``(RSS, PSS)`` summed over ``pids`` in MB (2^20 bytes), from /proc/<pid>/status and smaps_rollup."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


class Servers:
    """Processes started in sessions of their own, stopped (SIGTERM, then SIGKILL) by their process group."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
        handle = log.open("ab")
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def memory(self) -> tuple[float, float, int]:
        pids = process_tree([p.pid for p in self.processes])
        return (*memory_mb(pids), len(pids))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()


# ---------------------------------------------------------------------------------------------------------
# Label Studio


def install_label_studio(venv: Path) -> None:
    """Make ``venv`` a virtualenv with ``label-studio==1.23.2`` (PyPI; takes minutes the first time)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"installing label-studio=={LS_VERSION} into {venv}", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"label-studio=={LS_VERSION}"], check=True)


def label_studio_round(args, items_json: Path, n: int, work: Path, postgres: bool) -> dict:
    """One round of Label Studio on a fresh data dir (and, with ``postgres``, a fresh database)."""
    binary = args.ls_venv / "bin" / "label-studio"
    if not binary.exists():
        raise SystemExit(f"no {binary}: run with --install-label-studio (or --ls-venv DIR)")
    data_dir = work / f"ls-data-{uuid.uuid4().hex[:8]}"
    token = secrets.token_hex(20)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATABASE", "CELERY", "POSTGRE"))},
        "LATEST_VERSION_CHECK": "false",  # it asks PyPI otherwise, which can hang the start
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # the --user-token below, sent as "Token <key>"
        "COLLECT_ANALYTICS": "false",
    }
    if postgres:
        name = database_name("vsls_ls")
        recreate_database(name)
        env.update(DJANGO_DB="default", POSTGRE_NAME=name, POSTGRE_USER="postgres", POSTGRE_PASSWORD="postgres",
                   POSTGRE_HOST="127.0.0.1", POSTGRE_PORT="5432")  # fmt: skip
    port = args.port + 10
    servers = Servers()
    try:
        started = time.monotonic()
        process = servers.start(
            [str(binary), "start", "--no-browser", "--data-dir", str(data_dir), "--host", "127.0.0.1",
             "--port", str(port), "--username", "bench@example.com", "--password", LARRY_PASSWORD,
             "--user-token", token],
            env, work / "label_studio.log", work,
        )  # fmt: skip
        wait_http(port, "/health", process, seconds=600)
        start_s = time.monotonic() - started
        time.sleep(args.settle)
        rss, pss, count = servers.memory()
        client = Client(port, {"Authorization": f"Token {token}"})
        project = client.json("POST", "/api/projects", {"title": "bench", "label_config": LS_LABEL_CONFIG})
        pid = project["id"]
        body, headers = multipart("file", items_json, "application/json")
        started = time.perf_counter()
        client.call("POST", f"/api/projects/{pid}/import", body, headers)
        queryable = time.perf_counter() - started
        while client.json("GET", f"/api/projects/{pid}/")["task_number"] < n:
            time.sleep(args.poll)
        imported = time.perf_counter() - started
        query = urlencode({"exportType": "JSON", "download_all_tasks": "true"})
        data, export_s = client.call("GET", f"/api/projects/{pid}/export?{query}")
        exported = len(json.loads(data))
        assert exported == n, f"Label Studio exported {exported} of {n} tasks"
        item_ms, submit_ms = [], []
        annotation = {
            "result": [{"from_name": "label", "to_name": "response", "type": "choices",
                        "value": {"choices": ["accept"]}}],
            "lead_time": 1.0,
        }  # fmt: skip
        payload = json.dumps(annotation).encode()
        for _ in range(args.reviews):
            data, next_s = client.call("GET", f"/api/projects/{pid}/next")
            task = json.loads(data)["id"]
            _, submit_s = client.call(
                "POST", f"/api/tasks/{task}/annotations/?project={pid}", payload, {"Content-Type": "application/json"}
            )
            item_ms.append((next_s + submit_s) * 1000)
            submit_ms.append(submit_s * 1000)
        client.close()
    finally:
        servers.stop()
    return {
        **common_figures(postgres, start_s, (rss, pss, count), imported, queryable, export_s, exported),
        **latencies(item_ms, submit_ms),
    }


def common_figures(postgres: bool, start_s: float, memory: tuple, import_s: float, queryable_s: float,
                   export_s: float, exported: int) -> dict:  # fmt: skip
    """The figures both systems have, named as the summary reads them (``memory``: RSS MB, PSS MB, processes)."""
    return {
        "database": "postgresql" if postgres else "sqlite",
        "start_s": start_s,
        "idle_rss_mb": memory[0],
        "idle_pss_mb": memory[1],
        "processes": memory[2],
        "import_s": import_s,
        "import_queryable_s": queryable_s,
        "export_s": export_s,
        "export_items": exported,
        "export_items_per_s": exported / export_s,
    }


def latencies(item_ms: list[float], submit_ms: list[float]) -> dict:
    """p50 and p95 of the review loop's per-item (next + submit) and submit latencies, with their n."""
    return {
        "reviews": len(item_ms),
        "item_p50_ms": percentile(item_ms, 50),
        "item_p95_ms": percentile(item_ms, 95),
        "submit_p50_ms": percentile(submit_ms, 50),
        "submit_p95_ms": percentile(submit_ms, 95),
    }


# ---------------------------------------------------------------------------------------------------------
# Larry


def larry_env(database: str, broker: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "LARRY_JUDGE", "LARRY_TEACHER"))}
    env.update(DATABASE_URL=database, DJANGO_SETTINGS_MODULE="larry_web.settings")
    if broker:
        env["CELERY_BROKER_URL"] = broker
    return env


def larry_prepare(env: dict) -> str:
    """Migrate the fresh database; create the staff user; its API token."""
    python = str(ROOT / ".venv" / "bin" / "python")
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v0"], env=env, cwd=ROOT, check=True)
    script = (
        "from django.contrib.auth import get_user_model\n"
        "from rest_framework.authtoken.models import Token\n"
        f"u = get_user_model().objects.create_superuser({LARRY_USER!r}, 'bench@example.com', {LARRY_PASSWORD!r})\n"
        "print(Token.objects.create(user=u).key)\n"
    )
    out = subprocess.run([python, "manage.py", "shell", "-c", script], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return out.strip().splitlines()[-1]


def larry_start(servers: Servers, env: dict, port: int, work: Path, celery: bool) -> float:
    """gunicorn as ``make serve`` starts it (and a Celery worker as the README does); seconds until both are up."""
    bin_dir = ROOT / ".venv" / "bin"
    started = time.monotonic()
    gunicorn = servers.start(
        [str(bin_dir / "gunicorn"), "larry_web.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--timeout", "120", "--access-logfile", "-"],
        env, work / "larry_gunicorn.log", ROOT,
    )  # fmt: skip
    if celery:
        log = work / f"larry_celery_{uuid.uuid4().hex[:6]}.log"
        worker = servers.start([str(bin_dir / "celery"), "-A", "larry_web", "worker", "-l", "info"], env, log, ROOT)
    wait_http(port, "/login/", gunicorn)
    if celery:
        deadline = time.monotonic() + 120
        while b" ready." not in log.read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the Celery worker did not start; see {log}")
            time.sleep(0.25)
    return time.monotonic() - started


def larry_login(client: Client) -> None:
    """Log in through the log-in form, as a browser does (session and CSRF cookies)."""
    page, _ = client.call("GET", "/login/")
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
    form = urlencode({"username": LARRY_USER, "password": LARRY_PASSWORD, "csrfmiddlewaretoken": token}).encode()
    client.call("POST", "/login/", form, {"Content-Type": "application/x-www-form-urlencoded"}, ok=(302,))
    if "sessionid" not in client.cookies:
        raise SystemExit("log-in to Larry failed: no session cookie")


FUNNEL_IMPORTED = re.compile(rb'<a class="n" href="[^"]*">(\d+)</a> imported')


def larry_wait_gated(client: Client, slug: str, n: int, poll: float) -> None:
    """Poll the project page until its funnel shows ``n`` imported and no item "not yet gated"."""
    while True:
        page, _ = client.call("GET", f"/projects/{slug}/")
        found = FUNNEL_IMPORTED.search(page)
        if found is None:
            raise SystemExit(f"no funnel on /projects/{slug}/")
        if int(found.group(1)) >= n and b"not yet gated" not in page:
            return
        time.sleep(poll)


CARD_ITEM = re.compile(rb'hx-post="/projects/[^/]+/review/(\d+)/"')
CARD_LEASE = re.compile(rb'name="leased_at" value="([^"]*)"')


def larry_export(client: Client, slug: str) -> dict:
    size, lines, seconds = client.stream_lines(f"/api/projects/{slug}/export/chat.jsonl")
    return {"items": lines, "seconds": seconds, "items_per_s": lines / seconds, "mb": size / 1e6}


def larry_queue(client: Client, slug: str, n: int, poll: float) -> None:
    """Queue ``n`` items for the SMEs (a uniform draw) as a big draw is made: ``Prefer: respond-async``, then the
    draw polled every ``poll`` s until done, so every size takes the same path. Raises SystemExit when it fails."""
    body = json.dumps({"size": n, "design": "uniform", "seed": 1}).encode()
    headers = {"Content-Type": "application/json", "Prefer": "respond-async"}
    draw = json.loads(client.call("POST", f"/api/projects/{slug}/samples/", body, headers, ok=(202,))[0])
    while draw["status"] not in ("done", "failed"):
        time.sleep(poll)
        draw = client.json("GET", f"/api/projects/{slug}/samples/{draw['id']}/")
    if draw["status"] != "done" or draw["drawn"] != n:
        raise SystemExit(f"Larry's draw of {n} items ended {draw['status']}: {draw['drawn']} drawn; {draw['error']}")


def larry_review(client: Client, slug: str, reviews: int) -> tuple[list[float], float]:
    """The review screen driven as htmx does: ``reviews`` accept POSTs, each answered with the next card.

    Returns each POST's milliseconds and the first card's (GET) milliseconds."""
    htmx = {"HX-Request": "true", "HX-Current-URL": f"http://127.0.0.1/projects/{slug}/review/"}
    card, first_s = client.call("GET", f"/projects/{slug}/review/", headers=htmx)
    posted_ms = []
    for _ in range(reviews):
        item = CARD_ITEM.search(card)
        if item is None:
            raise SystemExit(f"no item on the review card after {len(posted_ms)} reviews")
        form = urlencode({"decision": "accept", "leased_at": CARD_LEASE.search(card).group(1).decode()}).encode()
        headers = {
            **htmx,
            "Content-Type": "application/x-www-form-urlencoded",
            "X-CSRFToken": client.cookies["csrftoken"],
        }
        card, seconds = client.call("POST", f"/projects/{slug}/review/{int(item.group(1))}/", form, headers)
        posted_ms.append(seconds * 1000)
    return posted_ms, first_s * 1000


def larry_import_job(api: Client, slug: str, body: bytes, headers: dict, poll: float) -> tuple[dict, float, float]:
    """POST the upload with ``Prefer: respond-async``, then poll the import job it answers (202, ``Location``)
    until it ends: ``(its report, seconds to the 202, seconds until the job is done)``. SystemExit when it
    fails."""
    started = time.perf_counter()
    response = api.open("POST", f"/api/projects/{slug}/import/", body, {**headers, "Prefer": "respond-async"})
    data = response.read()
    answered = time.perf_counter() - started
    if response.status != 202:
        raise SystemExit(f"POST /api/projects/{slug}/import/ with respond-async: {response.status} {data[:500]!r}")
    location = urlsplit(response.headers["Location"]).path
    while (job := api.json("GET", location))["status"] not in ("done", "failed"):
        time.sleep(poll)
    if job["status"] != "done":
        raise SystemExit(f"the import job failed: {job['error'][:500]}")
    return job["report"], answered, time.perf_counter() - started


def larry_round(
    args, items_jsonl: Path, n: int, work: Path, postgres: bool, reviews: int, bench="vsls", respond_async=False
) -> dict:
    """One round of Larry on a fresh database: PostgreSQL (``<DATABASE_URL's name>_bench_<bench>``) with a Celery
    worker, or the embedded SQLite. With ``respond_async`` the import is sent with ``Prefer: respond-async``
    (answered 202 with a job, polled until done: ``import_queryable_s``; ``import_answered_s`` the 202 itself)."""
    if postgres:
        name = database_name(bench)
        recreate_database(name)
        env = larry_env(database_url(name), args.redis_url)
    else:
        env = larry_env(f"sqlite:///{work / f'larry-{uuid.uuid4().hex[:8]}.sqlite3'}", None)
    env["LARRY_MEDIA_ROOT"] = str(work / "media")  # the uploads of import jobs, gone with the work folder
    token = larry_prepare(env)
    servers = Servers()
    try:
        start_s = larry_start(servers, env, args.port, work, celery=postgres)
        time.sleep(args.settle)
        rss, pss, count = servers.memory()
        api = Client(args.port, {"Authorization": f"Token {token}"})
        browser = Client(args.port)
        larry_login(browser)
        slug = "bench"
        api.json("POST", "/api/projects/", {"slug": slug, "name": "Benchmark"})
        body, headers = multipart("file", items_jsonl, "application/jsonl")
        started = time.perf_counter()
        answered = None
        if respond_async:
            report, answered, queryable = larry_import_job(api, slug, body, headers, args.poll)
        else:
            report = json.loads(api.call("POST", f"/api/projects/{slug}/import/", body, headers)[0])
            queryable = time.perf_counter() - started
        if report["created"] != n:
            raise SystemExit(f"Larry imported {report['created']} of {n} items: {str(report)[:500]}")
        larry_wait_gated(browser, slug, n, args.poll)
        gated = time.perf_counter() - started
        fresh = larry_export(api, slug)
        started = time.perf_counter()
        larry_queue(api, slug, n, args.poll)
        queue_s = time.perf_counter() - started
        posted_ms, first_ms = larry_review(browser, slug, reviews)
        later = larry_export(api, slug)
        api.close()
        browser.close()
    finally:
        servers.stop()
    return {
        **common_figures(postgres, start_s, (rss, pss, count), gated, queryable, fresh["seconds"], fresh["items"]),
        "export_items_per_s_later": later["items_per_s"],
        "queue_s": queue_s,
        "first_card_ms": first_ms,
        **({"import_answered_s": answered} if answered is not None else {}),
        **latencies(posted_ms, posted_ms),
    }


# ---------------------------------------------------------------------------------------------------------
# Summary


def _median(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def summarize(rounds: dict[str, list[dict]]) -> dict:
    """The ratios of the issue from per-round figures ``{system: [round dict, ...]}``.

    Systems: ``label_studio`` (the baseline), ``larry_pg``, optionally ``larry_sqlite`` (ratios named
    ``..._sqlite``) and ``label_studio_pg`` (Larry on PostgreSQL against it: ``..._vs_ls_postgresql``).
    Each ratio is of the medians over rounds: speeds Larry over Label Studio (import: LS seconds over
    Larry's; review: LS per-item p50 over Larry's; export: Larry's items/s over LS's), memory Larry's
    over LS's. ``ranges`` holds each system's per-round minimum and maximum of each figure.
    """

    def ratios(larry: list[dict], ls: list[dict], suffix: str) -> dict:
        out = {
            f"import_gated_ratio{suffix}": _median(ls, "import_s") / _median(larry, "import_s"),
            f"review_item_p50_ratio{suffix}": _median(ls, "item_p50_ms") / _median(larry, "item_p50_ms"),
            f"export_items_ratio{suffix}": _median(larry, "export_items_per_s") / _median(ls, "export_items_per_s"),
            f"idle_rss_ratio{suffix}": _median(larry, "idle_rss_mb") / _median(ls, "idle_rss_mb"),
        }
        if all("export_items_per_s_later" in r for r in larry):
            out[f"export_items_ratio_later{suffix}"] = _median(larry, "export_items_per_s_later") / _median(
                ls, "export_items_per_s"
            )
        return out

    ls, pg = rounds["label_studio"], rounds["larry_pg"]
    summary = {**ratios(pg, ls, ""), "submit_p95_ms": _median(pg, "submit_p95_ms")}
    if rounds.get("larry_sqlite"):
        summary.update(ratios(rounds["larry_sqlite"], ls, "_sqlite"))
        summary["submit_p95_ms_sqlite"] = _median(rounds["larry_sqlite"], "submit_p95_ms")
    if rounds.get("label_studio_pg"):
        summary.update(ratios(pg, rounds["label_studio_pg"], "_vs_ls_postgresql"))
    summary["medians"] = {
        system: {key: _median(rows, key) for key, value in rows[0].items() if isinstance(value, (int, float))}
        for system, rows in rounds.items()
        if rows
    }
    summary["ranges"] = {
        system: {
            key: [min(r[key] for r in rows), max(r[key] for r in rows)]
            for key, value in rows[0].items()
            if isinstance(value, (int, float))
        }
        for system, rows in rounds.items()
        if rows
    }
    return summary


def rounded(value):
    """``value`` with floats rounded to 4 significant digits, through dicts and lists."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def describe(system: str, r: dict) -> str:
    text = (
        f"{system} ({r['database']}): idle RSS {r['idle_rss_mb']:.0f} MB over {r['processes']} processes "
        f"(PSS {r['idle_pss_mb']:.0f}); import {r['import_s']:.2f} s (queryable {r['import_queryable_s']:.2f} s); "
        f"export {r['export_items']} items at {r['export_items_per_s']:,.0f}/s; "
        f"next+submit p50 {r['item_p50_ms']:.1f} ms, submit p95 {r['submit_p95_ms']:.1f} ms (n={r['reviews']})"
    )
    if "queue_s" in r:
        text += f"; queueing {r['queue_s']:.2f} s; export after the reviews {r['export_items_per_s_later']:,.0f}/s"
    return text


# ---------------------------------------------------------------------------------------------------------


def unlabel(items_jsonl: Path, every: int) -> int:
    """Drop ``human_label`` from every ``every``-th row (rows 0, every, 2 every...), so the SMEs have items to
    review (an item with a prior label has its review); how many rows lost theirs."""
    rewritten = items_jsonl.with_suffix(".unlabelled")
    dropped = 0
    with items_jsonl.open(encoding="utf-8") as source, rewritten.open("w", encoding="utf-8") as out:
        for i, line in enumerate(source):
            if i % every == 0:
                row = json.loads(line)
                row.pop("human_label", None)
                line = json.dumps(row, ensure_ascii=False) + "\n"
                dropped += 1
            out.write(line)
    rewritten.replace(items_jsonl)
    return dropped


def write_ls_json(items_jsonl: Path, items_json: Path) -> None:
    """The same rows as Label Studio tasks: a JSON list of ``{"data": row}``."""
    with items_jsonl.open(encoding="utf-8") as source:
        tasks = [{"data": json.loads(line)} for line in source]
    items_json.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")


def side_by_side(args, work: Path) -> None:
    items_jsonl, items_json = work / "items.jsonl", work / "items.json"
    origin = write_items(items_jsonl, args.items)
    unlabel(items_jsonl, args.unlabelled_every)
    write_ls_json(items_jsonl, items_json)
    print(f"{args.items} items ({items_jsonl.stat().st_size / 1e6:.1f} MB) sampled from {origin}", flush=True)
    systems = ["label_studio", "larry_pg"] + ([] if args.no_sqlite else ["larry_sqlite"])
    systems += ["label_studio_pg"] if args.ls_postgresql else []
    rounds: dict[str, list[dict]] = {s: [] for s in systems}
    for number in range(args.rounds):
        order = systems[number % len(systems) :] + systems[: number % len(systems)]
        for system in order:
            if system.startswith("label_studio"):
                result = label_studio_round(args, items_json, args.items, work, postgres=system.endswith("_pg"))
            else:
                result = larry_round(args, items_jsonl, args.items, work, system == "larry_pg", args.reviews)
            rounds[system].append(result)
            print(f"round {number + 1}/{args.rounds} {describe(system, result)}", flush=True)
    summary = summarize(rounds)
    ls_databases = "SQLite and PostgreSQL" if args.ls_postgresql else "SQLite"
    print(
        json.dumps(
            rounded(
                {
                    "benchmark": "vs_label_studio",
                    "label_studio": f"{LS_VERSION} (dev server, {ls_databases})",
                    "items": args.items,
                    "rounds_run": args.rounds,
                    "reviews_per_round": args.reviews,
                    "source": origin,
                    **summary,
                    "rounds": rounds,
                }
            )
        )
    )


def growth(args, work: Path) -> None:
    """Larry alone on PostgreSQL at each size: per-item costs of import+gate, export, queueing; review latency."""
    rows = []
    for n in args.sizes:
        items_jsonl = work / f"items-{n}.jsonl"
        origin = write_items(items_jsonl, n)
        unlabel(items_jsonl, args.unlabelled_every)
        print(f"{n} items ({items_jsonl.stat().st_size / 1e6:.1f} MB) sampled from {origin}", flush=True)
        # Every size by the same path: answered at once (202), the import run by the worker as a job.
        r = larry_round(
            args, items_jsonl, n, work, postgres=True, reviews=args.reviews, bench="vsls_growth", respond_async=True
        )
        items_jsonl.unlink()
        row = {
            "items": n,
            "import_queryable_us_per_item": r["import_queryable_s"] / n * 1e6,
            "import_gated_us_per_item": r["import_s"] / n * 1e6,
            "export_us_per_item": r["export_s"] / r["export_items"] * 1e6,
            "queue_us_per_item": r["queue_s"] / n * 1e6,
            **r,
        }
        rows.append(row)
        print(
            f"growth {n}: import answered (202) in {r['import_answered_s']:.2f} s, job done at "
            f"{r['import_queryable_s']:.1f} s, until gated {r['import_s']:.1f} s "
            f"({row['import_gated_us_per_item']:.0f} us/item), "
            f"export {row['export_us_per_item']:.1f} us/item, queueing {r['queue_s']:.1f} s "
            f"({row['queue_us_per_item']:.0f} us/item), next+submit p50 {r['item_p50_ms']:.1f} ms "
            f"p95 {r['item_p95_ms']:.1f} ms (n={r['reviews']})",
            flush=True,
        )
    first, last = rows[0], rows[-1]
    print(
        json.dumps(
            rounded(
                {
                    "benchmark": "vs_label_studio --growth",
                    "sizes": args.sizes,
                    # per-item cost at the largest size over that at the smallest: 1 is flat, below 1 falling
                    "cost_growth": {
                        key: last[key] / first[key]
                        for key in (
                            "import_gated_us_per_item",
                            "export_us_per_item",
                            "queue_us_per_item",
                            "item_p50_ms",
                        )
                    },
                    "sizes_run": rows,
                }
            )
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reviews", type=int, default=200, help="items reviewed per system and round")
    parser.add_argument("--install-label-studio", nargs="?", const=str(DEFAULT_LS_VENV), metavar="DIR")
    parser.add_argument("--ls-venv", type=Path, default=DEFAULT_LS_VENV)
    parser.add_argument("--ls-postgresql", action="store_true", help="also run Label Studio on PostgreSQL")
    parser.add_argument("--no-sqlite", action="store_true", help="leave Larry on SQLite out")
    parser.add_argument(
        "--unlabelled-every", type=int, default=10, help="every k-th item has no prior label, for the SMEs to review"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="the Celery broker for Larry")
    parser.add_argument("--port", type=int, default=18_700)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after start before memory is read")
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between polls of the import's progress")
    parser.add_argument("--growth", action="store_true", help="Larry alone on PostgreSQL at --sizes")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.install_label_studio:
        args.ls_venv = Path(args.install_label_studio).expanduser()
        install_label_studio(args.ls_venv)
    with tempfile.TemporaryDirectory(prefix="vs-ls-") as folder:
        work = Path(folder)
        try:
            growth(args, work) if args.growth else side_by_side(args, work)
        except BaseException:
            for log in sorted(work.glob("*.log")):
                print(f"--- last lines of {log.name}:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise


if __name__ == "__main__":
    main()
