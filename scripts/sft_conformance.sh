#!/usr/bin/env bash
# Check termigen's SFT exports with the real trainers, and print a matrix
# trainer x version x template: loads / trains (one optimiser step) / masks (the injected-error
# turns are outside the loss, every kept assistant turn inside). Exit 1 if any cell fails.
#   datasets 4.0 (LLaMA-Factory's pin) and 5.x   every JSONL/parquet; a schema merge is reported
#   LLaMA-Factory 0.9.5 get_dataset              ShareGPT export, templates qwen llama3 mistral gemma
#   TRL 0.24 (LF's pin) and current TRL          SFTTrainer(assistant_only_loss=True) + chat_template.jinja
#                                                on trajectories.parquet and openai.jsonl
#   axolotl 0.19                                 chat_template strategy with the shipped axolotl.yaml
#   OpenAI fine-tuning rules                     openai.jsonl: roles, keys, tool_call_id pairing, weight
#
#   scripts/sft_conformance.sh                 # runs the offline quickstart first (Docker, ~2 min)
#   scripts/sft_conformance.sh --sft RUN/export/sft [--no-axolotl]
#
# With --sft LLaMA-Factory checks the folder's own template (llamafactory.yaml); for the
# quickstart's run the ShareGPT export is re-rendered per template by resuming that run with
# `-s exports.N.with.template=T` (exports only; seconds). The trainers live in venvs outside the
# repo ($TERMIGEN_SFT_VENVS, default ~/.cache/termigen/sft-venv-{lf,trl,axolotl}); the first run
# installs them from the local mirror (~10 min with axolotl; --no-axolotl skips it). Nothing is
# downloaded from a model hub: the tokenizer is trained locally, the model is a random tiny Llama.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${TERMIGEN_PYTHON:-$REPO/.venv/bin/python}
TERMIGEN=$(dirname "$PY")/termigen
VENVS=${TERMIGEN_SFT_VENVS:-$HOME/.cache/termigen}
SFT="" RUN="" TEMPLATES=(qwen llama3 mistral gemma) AXOLOTL=1
HELPER=$REPO/scripts/sft_conformance.py

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --sft) SFT=$(realpath "$2"); shift 2 ;;
    --no-axolotl) AXOLOTL=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
if [ -n "$SFT" ] && [ ! -f "$SFT/openai.jsonl" ]; then
  echo "$SFT: no openai.jsonl here (expected an export/sft folder of a run)" >&2; exit 2
fi

# --- the trainers' venvs ------------------------------------------------------------------
# torch: the CPU wheel on this machine's disk if there is one, else the index's.
TORCH=$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -1 || true)
TORCH=${TORCH:-torch}
LF_PINS="llamafactory==0.9.5 transformers>=4.55,<=5.6.0,!=4.57.0 trl==0.24.0 datasets==4.0.0 accelerate>=1.3,<=1.11.0 peft>=0.18.0,<=0.18.1"
TRL_PINS="trl datasets>=5 transformers accelerate"
install() {  # venv, label, command...; the label (the pins) is recorded so a changed list reinstalls
  local venv=$1 label=$2; shift 2
  [ "$(cat "$venv/.termigen-pins" 2>/dev/null)" = "$label" ] && return
  echo "== installing $label into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  { "$venv/bin/pip" install --quiet --disable-pip-version-check "$TORCH" tokenizers pyarrow && "$@"; } > "$venv.install.log" 2>&1 \
    || { echo "installing into $venv failed: see $venv.install.log" >&2; return 1; }
  echo "$label" > "$venv/.termigen-pins"
}
LF=$VENVS/sft-venv-lf TRL=$VENVS/sft-venv-trl
# LLaMA-Factory with --no-deps: its gradio/web/audio extras are not needed to prepare data;
# its data pins are installed explicitly. (torchaudio, imported by llamafactory.data, has no
# wheel for this torch: the helper stands an empty module in for it.)
install "$LF" "$LF_PINS" sh -c "'$LF/bin/pip' install -q --no-deps llamafactory==0.9.5 && '$LF/bin/pip' install -q \
  'transformers>=4.55,<=5.6.0,!=4.57.0' 'trl==0.24.0' 'datasets==4.0.0' 'accelerate>=1.3,<=1.11.0' \
  'peft>=0.18.0,<=0.18.1' omegaconf fire einops pandas protobuf pydantic pyyaml safetensors scipy \
  sentencepiece tiktoken numpy packaging 'tyro<0.9.0' pillow 'torchdata>=0.10,<=0.11'" || exit 1
install "$TRL" "$TRL_PINS" sh -c "'$TRL/bin/pip' install -q 'trl' 'datasets>=5' transformers accelerate" || exit 1
# axolotl brings its own stack (transformers, trl, datasets 4.x, torchao, bitsandbytes...): ~7 min
# the first time; a failed install is a row of the matrix, not the end of the run.
AXO=$VENVS/sft-venv-axolotl AXO_PINS="axolotl==0.19.0" AXO_OK=0
if [ "$AXOLOTL" = 1 ]; then
  install "$AXO" "$AXO_PINS" sh -c "'$AXO/bin/pip' install -q '$AXO_PINS'" && AXO_OK=1
fi

# --- the export ---------------------------------------------------------------------------
if [ -z "$SFT" ]; then
  RUN=$HOME/.cache/termigen/sft-conformance-run
  # always run (a resume of a finished run only re-exports, in seconds): the exports checked are
  # this checkout's, never files an older termigen left in the cache
  echo "== running (or resuming) the quickstart into $RUN"
  "$TERMIGEN" run examples/quickstart.yaml --out "$RUN" --no-progress >"$RUN.log" 2>&1 \
    || { echo "the quickstart failed: see $RUN.log" >&2; exit 1; }
  SFT=$RUN/export/sft
fi
RESULTS=$(mktemp /tmp/sft-conformance.XXXXXX.jsonl)
collect() {  # python helper subcommand args...: its result lines, or a failed row if it crashed
  "$@" 2>>"$RESULTS.log" | grep "^SFTCONF " >> "$RESULTS" \
    || echo "SFTCONF {\"trainer\": \"$3\", \"version\": \"?\", \"template\": \"-\", \"loads\": false, \"trains\": null, \"masks\": null, \"detail\": \"helper crashed; see $RESULTS.log\"}" >> "$RESULTS"
}

for venv in "$LF" "$TRL"; do collect "$venv/bin/python" "$HELPER" datasets "$SFT"; done
if [ -n "$RUN" ]; then
  # which exports entry is the sharegpt one, so -s can re-render it per template
  index=$("$PY" -c 'import sys, yaml; ex = yaml.safe_load(open(sys.argv[1]))["exports"]; print([e["use"] for e in ex].index("sharegpt"))' examples/quickstart.yaml)
  for t in "${TEMPLATES[@]}"; do
    dir=$RUN/export/sft-lf-$t
    "$TERMIGEN" run examples/quickstart.yaml --out "$RUN" --no-progress \
      -s "exports.$index.with.template=$t" -s "exports.$index.with.path=export/sft-lf-$t/sharegpt.json" >/dev/null
    collect "$LF/bin/python" "$HELPER" llamafactory "$dir" --template "$t" --kept-from "$SFT"
  done
else
  t=$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1] + "/llamafactory.yaml"))["template"])' "$SFT")
  collect "$LF/bin/python" "$HELPER" llamafactory "$SFT" --template "$t" --kept-from "$SFT"
fi
for venv in "$LF" "$TRL"; do collect "$venv/bin/python" "$HELPER" trl "$SFT"; done
if [ "$AXO_OK" = 1 ]; then
  collect "$AXO/bin/python" "$HELPER" axolotl "$SFT"
elif [ "$AXOLOTL" = 1 ]; then
  echo "SFTCONF {\"trainer\": \"axolotl\", \"version\": \"$AXO_PINS\", \"template\": \"-\", \"loads\": false, \"trains\": null, \"masks\": null, \"detail\": \"did not install: see $AXO.install.log\"}" >> "$RESULTS"
fi
collect "$PY" "$HELPER" openai "$SFT"
echo
echo "export: $SFT  (stderr of the trainers: $RESULTS.log)"
"$PY" "$HELPER" matrix "$RESULTS"
