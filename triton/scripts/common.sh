# shellcheck shell=bash
# Shared by the triton/scripts/*.sh (sourced; CODEDIR set by the caller).

# One line on stderr naming the script, exit status 2 (bad arguments).
die() {
  echo "error: $(basename "$0"): $*" >&2
  exit 2
}

# The vocab to use: $VOCAB_FILE, else BERT_DIR/vocab.txt (argument 1), else the downloaded Google
# vocab (vocab/README.md); prints nothing when there is none.
find_vocab() {
  local bert_dir=${1:-} prep_dir=${BERT_PREP_WORKING_DIR:-"$CODEDIR/data"}
  if [[ -n "${VOCAB_FILE:-}" ]]; then
    echo "$VOCAB_FILE"
  elif [[ -n "$bert_dir" && -f "$bert_dir/vocab.txt" ]]; then
    echo "$bert_dir/vocab.txt"
  elif [[ -f "$prep_dir/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt" ]]; then
    echo "$prep_dir/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"
  fi
}

# SQuAD v1.1 dev where data/bertPrep.py --action download --dataset squad puts it, if it is there.
find_squad_dev() {
  local dev=${BERT_PREP_WORKING_DIR:-"$CODEDIR/data"}/download/squad/v1.1/dev-v1.1.json
  if [[ -f "$dev" ]]; then echo "$dev"; fi
}

# Prints the usage comment at the top of script $1 (from line 2 to `set -euo`).
print_usage() {
  sed -n '2,/^set -euo/p' "$1" | sed -e '$d' -e 's/^# \{0,1\}//'
}
