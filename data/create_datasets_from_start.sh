#!/usr/bin/env bash
# Prepare BERT pretraining data from scratch, as the original script did:
#   download -> text formatting -> sharding -> HDF5 for phase 1 (seq 128, 20 predictions)
#   and phase 2 (seq 512, 80 predictions), with bertPrep's defaults (256 + 256 shards, 10% test
#   sentences, dupe_factor 5, masked_lm_prob 0.15, seed 12345) and Google's uncased vocab.
#
# Usage: data/create_datasets_from_start.sh [wiki_only|wiki_books]     (default wiki_only)
# Environment:
#   BERT_PREP_WORKING_DIR  where everything goes (default: this data/ folder)
#   BOOKSCORPUS_DIR        wiki_books only: a folder of *.txt books (Smashwords no longer serves BookCorpus)
#   N_PROCESSES            extraction / formatting / sentence splitting / HDF5 workers (default 4)
#   PYTHON                 interpreter (default python3)
set -euo pipefail

to_download=${1:-wiki_only}
case "$to_download" in
  wiki_only) dataset=wikicorpus_en ;;
  wiki_books) dataset=books_wiki_en_corpus ;;
  *) echo "usage: $0 [wiki_only|wiki_books]" >&2; exit 2 ;;
esac

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export BERT_PREP_WORKING_DIR="${BERT_PREP_WORKING_DIR:-$script_dir}"
prep=("${PYTHON:-python3}" "$script_dir/bertPrep.py" --n_processes "${N_PROCESSES:-4}")

# 1. Download
if [ "$to_download" = wiki_books ]; then
  "${prep[@]}" --action download --dataset bookscorpus
fi
"${prep[@]}" --action download --dataset wikicorpus_en
"${prep[@]}" --action download --dataset google_pretrained_weights  # includes the vocab files
"${prep[@]}" --action download --dataset squad
"${prep[@]}" --action download --dataset mrpc
"${prep[@]}" --action download --dataset sst-2

# 2. Text formatting: one article (book) per line
if [ "$to_download" = wiki_books ]; then
  "${prep[@]}" --action text_formatting --dataset bookscorpus
fi
"${prep[@]}" --action text_formatting --dataset wikicorpus_en

# 3. Sentence segmentation and balanced train/test shards
"${prep[@]}" --action sharding --dataset "$dataset"

# 4. and 5. HDF5 pretraining shards for both phases
vocab_file="$BERT_PREP_WORKING_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"
for phase in "128 20" "512 80"; do
  read -r seq_len max_pred <<<"$phase"
  "${prep[@]}" --action create_hdf5_files --dataset "$dataset" --max_seq_length "$seq_len" \
    --max_predictions_per_seq "$max_pred" --vocab_file "$vocab_file" --do_lower_case 1
done
