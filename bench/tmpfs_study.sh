#!/bin/bash
# Issue 13 acceptance: the default study with 2 trials (MiniLM) with every file on a real
# 700 MiB tmpfs, once with retention.weights_only false (before) and once true (after).
#
#     sudo bash bench/tmpfs_study.sh [OUT_DIR]     # root: it mounts and unmounts tmpfs
#
# Prints, per setting, each trial's exit code (73 = not enough space), the wall time, the
# tmpfs usage and every checkpoint left with its bytes and kind, plus the pressure events;
# keeps each run's log and trial-1 report in OUT_DIR (default /tmp/leanhpo-tmpfs-study).
# TMPFS_SIZE (default 700m) and EXTRA_CONFIG (one more overlay, applied before the study's own,
# e.g. tests/config/tiny.yaml for a smoke run) change the setting.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=$REPO/.venv/bin/python
OUT=${1:-/tmp/leanhpo-tmpfs-study}
SIZE=${TMPFS_SIZE:-700m}
mkdir -p "$OUT"
for mode in false true; do
  dir=$OUT/mnt-$mode
  mkdir -p "$dir"
  mount -t tmpfs -o size=$SIZE tmpfs "$dir"
  trap 'umount "$dir" 2>/dev/null' EXIT
  cd "$dir"
  printf 'study: {name: tmpfs700, n_trials: 2}\nretention: {weights_only: %s}\n' $mode > overlay.yaml
  cfg=(--config "$REPO/config.yaml")
  [ -n "${EXTRA_CONFIG:-}" ] && cfg+=(--config "$EXTRA_CONFIG")
  cfg+=(--config overlay.yaml)
  start=$(date +%s)
  PYTHONPATH=$REPO/src $PY -m leanhpo prepare-data "${cfg[@]}" > log.txt 2>&1
  PYTHONPATH=$REPO/src $PY -m leanhpo create-study "${cfg[@]}" >> log.txt 2>&1
  for slot in 0 1; do
    PYTHONPATH=$REPO/src $PY -m leanhpo run-trial "${cfg[@]}" --slot $slot >> log.txt 2>&1
    echo "weights_only=$mode slot $slot exit $?"
  done
  echo "weights_only=$mode seconds $(( $(date +%s) - start ))"
  df -B1 "$dir" | tail -1
  for folder in experiments/tmpfs700/trial_*/checkpoints/epoch_*; do
    kind=$($PY -c "import json,sys; print(json.load(open(sys.argv[1])).get('kind', 'full'))" "$folder/MANIFEST.json")
    echo "$folder $(du -sb "$folder" | cut -f1) $kind"
  done
  grep -a '"kind": "pressure\|"kind": "no_space"' log.txt | cut -c1-200
  cp log.txt "$OUT/log-$mode.txt"
  cp experiments/tmpfs700/trial_0001/report.json "$OUT/report1-$mode.json" 2>/dev/null
  cd /
  umount "$dir"
  trap - EXIT
done
