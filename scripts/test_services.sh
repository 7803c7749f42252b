#!/usr/bin/env bash
# Prepares what the tests need, as far as this machine allows, then runs a command (the suite):
#
#   scripts/test_services.sh .venv/bin/python -m pytest -n 2     # what `make test` runs
#
# - PostgreSQL and Redis on 127.0.0.1: started when installed but down (and left running).
# - Debian's Chromium at /usr/bin/chromium: installed with apt-get when missing and we are root
#   (or sudo needs no password); otherwise the command to run is printed.
# - A vLLM server on the CPU with a tiny model (scripts/vllm_judge.sh: installed into .vllm/ the
#   first time, about 2 minutes and 3 GB of RAM). One already answering on its port, or the one
#   LARRY_TEST_VLLM_URL names, is used and left alone; one started here is stopped when the
#   command ends, fails or is interrupted. LARRY_TEST_VLLM=0 leaves vLLM out (`make test VLLM=0`).
#
# Nothing here stops the run: what cannot be prepared makes only its own tests skip, each saying
# what is missing and the command that provides it (tests/services.py), or fail under
# LARRY_REQUIRE_SERVICES=1 (CI). The command gets LARRY_TEST_VLLM_URL and LARRY_TEST_VLLM_MODEL,
# or LARRY_VLLM_UNAVAILABLE with the reason. Exits with the command's status.
set -uo pipefail
unset LARRY_VLLM_UNAVAILABLE
cd "$(dirname "$0")/.."

say() { echo "test services: $*" >&2; }

answers() {  # answers PORT: does something listen on 127.0.0.1:PORT?
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 126
  fi
}

# PostgreSQL and Redis: the same commands as the machine's own start-up.
pg_start="pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"
redis_start='redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
waiting=()
if answers 5432; then
  :
elif command -v pg_ctlcluster >/dev/null && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
  say "starting PostgreSQL: $pg_start"
  if as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start; then
    waiting+=(5432)
  else
    say "could not start PostgreSQL (needs root): run $pg_start"
  fi
else
  say "PostgreSQL is not installed: its tests run on SQLite or skip (apt-get install -y postgresql)"
fi
if answers 6379; then
  :
elif command -v redis-server >/dev/null; then
  say "starting Redis: $redis_start"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null && waiting+=(6379)
else
  say "Redis is not installed: its tests skip (apt-get install -y redis-server)"
fi

# Debian's Chromium for the browser tests: Playwright drives it and never downloads a browser.
chromium_install="apt-get update && apt-get install -y chromium"
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && as_root true 2>/dev/null; then
    say "installing Debian's chromium for the browser tests (about a minute): $chromium_install"
    as_root apt-get update -qq >/dev/null \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || say "apt-get could not install chromium: the browser tests skip"
  else
    say "no /usr/bin/chromium and no root to install it: the browser tests skip (run as root: $chromium_install)"
  fi
fi

# vLLM: stopped on the way out only if started here.
vllm_started=0
stop_vllm() {
  if [ "$vllm_started" = 1 ]; then
    scripts/vllm_judge.sh stop >/dev/null 2>&1 || true
    vllm_started=0
  fi
}
trap stop_vllm EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "${LARRY_TEST_VLLM:-1}" = 0 ]; then
  unset LARRY_TEST_VLLM_URL LARRY_TEST_VLLM_MODEL
  export LARRY_VLLM_UNAVAILABLE="vLLM was left out (make test VLLM=0, or LARRY_TEST_VLLM=0): run \`make test\` without it to start a vLLM server"
elif [ -n "${LARRY_TEST_VLLM_URL:-}" ]; then
  say "vLLM: using LARRY_TEST_VLLM_URL=$LARRY_TEST_VLLM_URL"
elif vllm_env=$(scripts/vllm_judge.sh status); then
  export $vllm_env
  say "vLLM: using the server already running at $LARRY_TEST_VLLM_URL (left running)"
else
  say "vLLM: starting a server on the CPU (scripts/vllm_judge.sh start; the first time it installs into .vllm/)"
  vllm_started=1  # before it starts, so that Ctrl-C during the start stops it too
  if vllm_env=$(scripts/vllm_judge.sh start); then
    export $vllm_env
    say "vLLM: $LARRY_TEST_VLLM_URL (stopped when the tests end)"
  else
    status=$?
    # vllm_judge.sh printed its reason already, on stderr too.
    export LARRY_VLLM_UNAVAILABLE="${vllm_env:-scripts/vllm_judge.sh start failed (exit $status; its messages are above): run it again to see why}"
    unset LARRY_TEST_VLLM_URL LARRY_TEST_VLLM_MODEL
    say "vLLM: unavailable; its tests skip, saying why (above)"
  fi
fi

for port in "${waiting[@]}"; do
  for _ in $(seq 30); do answers "$port" && break; sleep 1; done
done

"$@"
