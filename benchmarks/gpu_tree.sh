#!/usr/bin/env bash
# Make this checkout fit the lent GPU machine's 64 MiB working-tree limit, and undo it.
#
# The device tool sends the tracked files (models/ alone is ~82 MB) plus what `carry` names.
# `prepare` stops tracking models/ (the files stay on disk, ignored through .git/info/exclude)
# and copies the datasets named into data/ (git-ignored) for `carry: ["data"]`; `restore`
# tracks models/ again. Do not commit between the two: the commit would delete the models.
#
#   bash benchmarks/gpu_tree.sh prepare camvid concrete-voc   # datasets from ../shared/data
#   bash benchmarks/gpu_tree.sh restore
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
marker="# gpu_tree.sh: models/ untracked for the GPU machine; run restore"

case "${1:-}" in
  prepare)
    shift
    if ! grep -qxF "$marker" "$exclude" 2>/dev/null; then
      git rm -r -q --cached models
      printf '%s\n/models/\n' "$marker" >> "$exclude"
    fi
    mkdir -p data
    for name in "$@"; do
      rm -rf "data/$name"
      cp -r "../shared/data/$name" "data/$name"
    done
    bytes=$( (git ls-files -z --cached --others --exclude-standard; find data -type f -print0) | du -cb --files0-from=- | tail -1 | cut -f1)
    echo "travels: $((bytes / 1048576)) MiB of 64 (carry [\"data\"]); models/ untracked: run 'bash $0 restore' before any commit"
    ;;
  restore)
    if ! grep -qxF "$marker" "$exclude" 2>/dev/null; then
      echo "nothing to restore: models/ was not untracked by prepare"
      exit 0
    fi
    awk -v marker="$marker" '$0 == marker { skip = 1; next } skip && $0 == "/models/" { skip = 0; next } { skip = 0; print }' \
      "$exclude" > "$exclude.tmp"
    mv "$exclude.tmp" "$exclude"
    git reset -q HEAD -- models
    git status --short models | head -5
    echo "models/ tracked again"
    ;;
  *)
    echo "usage: bash $0 prepare [DATASET...] | restore" >&2
    exit 2
    ;;
esac
