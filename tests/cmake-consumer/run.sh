#!/usr/bin/env bash
# The SDK as its users get it: installs this build of libhci into a temporary prefix, then builds
# and runs, out of tree and against that prefix only,
#   1. an embedding program (samples/embed/embed_example.cc) found through find_package(hci),
#      which loads the installed mock plugin, and a program linking the installed conformance
#      kit, run on the mock;
#   2. the same program built with `pkg-config --cflags --libs hci`;
#   3. the plugin template as installed (<datadir>/hci/plugin-template): its unit tests, its
#      Host integration test and, when the kit is installed, hci-conformance on the built .so;
#      then installs the template plugin into the prefix and runs the embedding program on it.
# Run by ctest (tests/cmake-consumer/CMakeLists.txt):
#   run.sh --build-dir DIR --source-dir DIR --libdir DIR --datadir DIR --generator NAME
#          --cxx PATH [--sanitize LIST] [--expect-conformance 0|1] [--jobs N]
# The work directory is removed on success and kept (and named) on failure.
set -euo pipefail
# The plugin loader refuses plugin files and directories writable by group or others.
umask 022

build_dir="" source_dir="" libdir="" datadir="" generator="" cxx=""
sanitize="" expect_conformance=0 jobs=2
while (($#)); do
  case "$1" in
    --build-dir) build_dir=$2 ;;
    --source-dir) source_dir=$2 ;;
    --libdir) libdir=$2 ;;
    --datadir) datadir=$2 ;;
    --generator) generator=$2 ;;
    --cxx) cxx=$2 ;;
    --sanitize) sanitize=$2 ;;
    --expect-conformance) expect_conformance=$2 ;;
    --jobs) jobs=$2 ;;
    *)
      echo "run.sh: unknown argument \"$1\"" >&2
      exit 2
      ;;
  esac
  shift 2
done
for var in build_dir source_dir libdir datadir generator cxx; do
  if [[ -z "${!var}" ]]; then
    echo "run.sh: --${var//_/-} is required" >&2
    exit 2
  fi
done
if [[ "$libdir" == /* || "$datadir" == /* ]]; then
  # `cmake --install --prefix` cannot move an absolute directory: the test would install over the
  # system. ctest reports the skip with this reason (SKIP_RETURN_CODE 77).
  echo "run.sh: CMAKE_INSTALL_LIBDIR ($libdir) or CMAKE_INSTALL_DATADIR ($datadir) is absolute;" \
    "cannot install into a temporary prefix"
  exit 77
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/hci-cmake-consumer-XXXXXX")
prefix="$work/prefix"
status=fail
finish() {
  if [[ "$status" == ok ]]; then
    rm -rf "$work"
  else
    echo "run.sh: FAILED; the work directory is kept: $work" >&2
  fi
}
trap finish EXIT

started=$SECONDS
log() { printf '[%3ds] %s\n' $((SECONDS - started)) "$*"; }
run() {
  log "\$ $*"
  "$@"
}
fail() {
  echo "run.sh: $*" >&2
  exit 1
}
# expect_lines FILE LINE...: FILE contains each LINE (a whole line).
expect_lines() {
  local file=$1 line
  shift
  for line in "$@"; do
    grep -qxF "$line" "$file" || fail "$file lacks the line \"$line\""
  done
}
# run_embed LABEL EXE CONFIG: runs the embedding program with a fresh state directory and the
# installed plugin directory, and checks that the VM went through Running to Stopped.
run_embed() {
  local label=$1 exe=$2 config=$3
  mkdir "$work/state-$label"
  log "\$ $exe $config  (HCI_PLUGIN_PATH=$plugin_dir)"
  local rc=0
  HCI_PLUGIN_PATH="$plugin_dir" HCI_STATE_DIR="$work/state-$label" \
    timeout 120 "$exe" "$config" >"$work/$label.out" 2>&1 || rc=$?
  cat "$work/$label.out"
  ((rc == 0)) || fail "$label: $exe exited with $rc"
  expect_lines "$work/$label.out" "demo: VM_PHASE_RUNNING" "demo: VM_PHASE_STOPPED (GuestShutdown)"
}
# no_tree_paths DIR: nothing under DIR (text files) mentions the source or build tree, so the
# consumer really built against the prefix alone.
no_tree_paths() {
  local hits
  hits=$(grep -rIlF -e "$source_dir" -e "$build_dir" "$1" || true)
  [[ -z "$hits" ]] || fail "these files refer to the source or build tree: $hits"
}

flags=() san=""
if [[ -n "$sanitize" ]]; then
  # An instrumented libhci needs instrumented programs (the runtime must come first).
  san="-fsanitize=$sanitize -fno-omit-frame-pointer"
  flags=("-DCMAKE_CXX_FLAGS=$san" "-DCMAKE_EXE_LINKER_FLAGS=$san" "-DCMAKE_MODULE_LINKER_FLAGS=$san"
         "-DCMAKE_SHARED_LINKER_FLAGS=$san" "-DHCI_SANITIZE=$sanitize")
fi
configure() {
  run cmake -S "$1" -B "$1/build" -G "$generator" -DCMAKE_BUILD_TYPE=Debug \
    "-DCMAKE_CXX_COMPILER=$cxx" "-DCMAKE_PREFIX_PATH=$prefix" \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF "${flags[@]}" "${@:2}"
}

# --- The whole project's install: libhci, headers, plugins, the CMake and pkg-config packages.
run cmake --install "$build_dir" --prefix "$prefix" >"$work/install.log"
# Every file must land in the prefix: an absolute DESTINATION would escape it.
escaped=$(sed -nE 's/^-- (Installing|Up-to-date): //p' "$work/install.log" |
  awk -v p="$prefix/" 'index($0, p) != 1')
[[ -z "$escaped" ]] || fail "installed outside the prefix: $escaped"
plugin_dir="$prefix/$libdir/hci/plugins"
[[ -f "$plugin_dir/hci_mock.so" ]] || fail "no hci_mock.so in $plugin_dir"
no_tree_paths "$prefix"

# --- 1. The embedding program through find_package(hci).
mkdir "$work/embed"
cp "$source_dir/tests/cmake-consumer/embed/CMakeLists.txt" \
  "$source_dir/tests/cmake-consumer/embed/conformance_main.cc" \
  "$source_dir/samples/embed/host.yaml" "$source_dir/samples/embed/embed_example.cc" "$work/embed/"
configure "$work/embed" "-DEXPECT_CONFORMANCE=$expect_conformance"
run cmake --build "$work/embed/build" -j "$jobs"
expect_lines "$work/embed/build/hci_package.txt" "HCI_PLUGIN_INSTALL_DIR=$plugin_dir"
no_tree_paths "$work/embed/build"
run_embed cmake "$work/embed/build/embed_example" "$work/embed/host.yaml"
if [[ "$expect_conformance" == 1 ]]; then
  # The installed kit links and runs from a program of one's own (one kind of the mock, to be
  # quick).
  run "$work/embed/build/conformance_main" --plugin "$plugin_dir/hci_mock.so" --kind network \
    >"$work/conformance.out" 2>&1 || {
    cat "$work/conformance.out"
    fail "conformance_main failed on the installed mock plugin"
  }
  tail -n 3 "$work/conformance.out"
fi

# --- 2. The same program through pkg-config.
export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig"
pc_plugin_dir=$(pkg-config --variable=plugindir hci)
[[ "$pc_plugin_dir" == "$plugin_dir" ]] ||
  fail "pkg-config --variable=plugindir hci is $pc_plugin_dir, not $plugin_dir"
read -ra pc_flags <<<"$(pkg-config --cflags --libs hci)"
read -ra san_flags <<<"$san"
run "$cxx" -std=c++20 -Wall -Wextra -Werror "${san_flags[@]}" "$work/embed/embed_example.cc" \
  -o "$work/embed_pc" "${pc_flags[@]}" "-Wl,-rpath,$prefix/$libdir"
run_embed pkg-config "$work/embed_pc" "$work/embed/host.yaml"

# --- 3. The plugin template, copied from the prefix as its users copy it.
cp -r "$prefix/$datadir/hci/plugin-template" "$work/template"
configure "$work/template" -DPLUGIN_WERROR=ON
run cmake --build "$work/template/build" -j "$jobs"
no_tree_paths "$work/template/build"
if [[ "$expect_conformance" == 1 ]]; then
  listed=$(ctest --test-dir "$work/template/build" -N)
  grep -q 'example\.conformance$' <<<"$listed" ||
    fail "the template has no example.conformance test although hci-conformance is installed"
fi
run ctest --test-dir "$work/template/build" --output-on-failure -j "$jobs"
# Shipping: installed next to the mock, the plugin serves a Host like any other.
run cmake --install "$work/template/build" --prefix "$prefix"
mode=$(stat -c %a "$plugin_dir/hci_example.so")
((!(8#$mode & 8#022))) || fail "hci_example.so was installed writable by group or others ($mode)"
sed 's/plugin: mock/plugin: example/' "$work/embed/host.yaml" >"$work/example.yaml"
expect_lines "$work/example.yaml" "  compute: {plugin: example}"
run_embed installed-template "$work/embed/build/embed_example" "$work/example.yaml"

status=ok
log "sdk consumer: all passed"
