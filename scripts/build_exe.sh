#!/usr/bin/env bash
# Build the one-folder TrojanScope with build.spec, then prove it works: run the
# frozen app's --self-test (trains a tiny demo BadNet, runs every analysis once,
# writes a report). Prints the build time, the folder's size and the self-test time;
# exits non-zero if either the build or the self-test fails.
#
#   scripts/build_exe.sh            build into build/ and dist/ (both git-ignored)
#   PYTHON=python3.11 scripts/build_exe.sh
#
# About 10-15 minutes on a busy 2-core machine (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
NAME=TrojanScope
APP_DIR=dist/$NAME
APP=$APP_DIR/$NAME
[[ -f $APP.exe ]] && APP=$APP.exe

echo "== building $APP_DIR with build.spec (PyInstaller $("$PYTHON" -m PyInstaller --version))"
build_start=$SECONDS
"$PYTHON" -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build build.spec
build_seconds=$((SECONDS - build_start))
[[ -f $APP.exe ]] && APP=$APP.exe

size_mib=$(du -sm "$APP_DIR" | cut -f1)
files=$(find "$APP_DIR" -type f | wc -l)

echo "== running the frozen app's --self-test"
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
test_start=$SECONDS
set +e
TROJANSCOPE_HOME="$home" XDG_CONFIG_HOME="$home/config" MPLCONFIGDIR="$home/mpl" QT_QPA_PLATFORM=offscreen "$APP" --self-test
status=$?
set -e
test_seconds=$((SECONDS - test_start))

echo "== summary"
echo "build time:     ${build_seconds} s"
echo "folder size:    ${size_mib} MiB in ${files} files ($APP_DIR)"
echo "self-test time: ${test_seconds} s (exit ${status}; includes training the tiny demo and the first-run font cache)"
if [[ $status -ne 0 ]]; then
  echo "self-test FAILED" >&2
fi
exit $status
