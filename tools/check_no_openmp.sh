#!/usr/bin/env bash
# Builds cadagrad without OpenMP, both ways a user can get such a build, installs each into a fresh venv
# outside the source tree, and checks that it reports openmp: False, links no OpenMP runtime, runs steps
# on one thread and passes the tests:
#   1. CADAGRAD_NO_OPENMP=1 with the usual compiler: the whole test suite;
#   2. a compiler without OpenMP (a cc wrapper that refuses -fopenmp and -Xpreprocessor, as Apple's clang
#      does without libomp): setup.py's probe must fall back to serial kernels with its warning; a quick
#      subset (tests/test_semantics.py: every kernel against the reference, bit for bit).
#
# Usage: tools/check_no_openmp.sh [extra pytest args for the full run of build 1]
# Environment: PYTHON (default python3). Needs git, a C compiler, readelf, and PyPI (the build and test
# requirements come from it). Nothing is written into the repository.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/cadagrad-no-openmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
pip_q=(--quiet --disable-pip-version-check)
fail() { echo "check_no_openmp: FAILED: $*" >&2; exit 1; }
step() { echo; echo "== [${SECONDS}s] $*"; }

# CI exports CADAGRAD_REQUIRE_OPENMP=1 for its other steps; these builds are meant to lack OpenMP.
unset CADAGRAD_REQUIRE_OPENMP CADAGRAD_NO_OPENMP CADAGRAD_NATIVE CADAGRAD_ISA PYTHONPATH
(cd "$repo" && git ls-files -co --exclude-standard | grep -v -E '\.(so|o|c|html)$' > "$work/files.txt")
copy_tree() {                          # a fresh copy per build: setuptools reuses objects in build/
  mkdir "$1" && (cd "$repo" && tar -cT "$work/files.txt" | tar -x -C "$1")
  # Here only, the three kernel variants compile in parallel (a release build is left as it is).
  if ! grep -qs '^\[build_ext\]' "$1/setup.cfg"; then
    printf '[build_ext]\nparallel = %s\n' "$(nproc 2>/dev/null || echo 2)" >> "$1/setup.cfg"
  fi
}

"$py" -m venv "$work/venv"
vpy="$work/venv/bin/python"

build_wheel() {                        # build_wheel NAME [VAR=value ...]: a wheel of a fresh copy
  local name=$1; shift
  copy_tree "$work/src-$name"
  env "$@" "$vpy" -m pip wheel --disable-pip-version-check -v --no-deps -w "$work/wheels-$name" "$work/src-$name" \
    > "$work/build-$name.log" 2>&1 || { tail -n 60 "$work/build-$name.log"; fail "build $name"; }
  grep -E "^ *cadagrad: " "$work/build-$name.log" | sed 's/^ */  build: /' || true
  wheel=$(ls "$work/wheels-$name"/cadagrad-*.whl)
  mkdir "$work/unpacked-$name"
  "$vpy" -m zipfile -e "$wheel" "$work/unpacked-$name"
  for so in "$work/unpacked-$name"/cadagrad/_kernels_*.so; do
    if readelf -d "$so" | grep -E 'NEEDED.*(gomp|omp)'; then fail "$(basename "$so") links an OpenMP runtime"; fi
  done
  echo "  $(basename "$wheel"): $(cd "$work/unpacked-$name/cadagrad" && ls _kernels_*.so | tr '\n' ' ')- no OpenMP runtime linked"
}

check_installed() {                    # the venv's cadagrad is the wheel's, serial, and says so
  (cd "$work/run" && "$vpy" - <<'EOF'
import os, re, sysconfig
import numpy as np
import cadagrad
from cadagrad import _kernels
site = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
where = os.path.realpath(os.path.dirname(cadagrad.__file__))
assert os.path.dirname(where) in site, f"cadagrad comes from {where}, not the venv's site-packages"
info = cadagrad.build_info()
print("  cadagrad from", cadagrad.__file__)
print("  build_info:", info)
assert info["openmp"] is False, "openmp: expected False"
for isa, module in _kernels.available_variants().items():
    assert not module.has_openmp() and "openmp" not in module.COMPILE_FLAGS, f"{isa}: {module.COMPILE_FLAGS}"
cadagrad.set_num_threads(4)
assert cadagrad.get_num_threads() == 1, "a serial build runs steps on one thread"
cadagrad.set_num_threads(None)
p = np.zeros(1 << 22, dtype=np.float32)
cadagrad.Adagrad(p, num_threads=4).step(np.ones_like(p))
assert not [line for line in open("/proc/self/maps") if re.search(r"/lib[gi]?omp[^/]*$", line)], "OpenMP loaded"
EOF
  )
}

mkdir "$work/run"
grep -E '^(tests/|pyproject\.toml$|README\.md$)' "$work/files.txt" > "$work/run-files.txt"
(cd "$repo" && tar -cT "$work/run-files.txt" | tar -x -C "$work/run")   # the tests run from here

step "1. CADAGRAD_NO_OPENMP=1: build, install into $work/venv, check"
build_wheel env CADAGRAD_NO_OPENMP=1
grep -q "CADAGRAD_NO_OPENMP is set" "$work/build-env.log" || fail "setup.py did not see CADAGRAD_NO_OPENMP"
"$vpy" -m pip install "${pip_q[@]}" torch==2.13.0      # as .ci/run; [test] then finds torch installed
"$vpy" -m pip install "${pip_q[@]}" "$wheel[test]"
check_installed
step "1. the test suite, serial build (from $work/run)"
(cd "$work/run" && "$vpy" -m pytest tests -p no:cacheprovider -q "$@")

step "2. a compiler without OpenMP: build, install, check"
mkdir "$work/bin"
cat > "$work/bin/cc-no-openmp" <<'EOF'
#!/bin/sh
# A C compiler without OpenMP: refuses the flags setup.py's probe tries, runs cc otherwise.
for arg in "$@"; do
  case $arg in
    -fopenmp* | -Xpreprocessor | -lgomp | -lomp) echo "cc-no-openmp: unsupported option '$arg'" >&2; exit 1 ;;
  esac
done
exec ${REAL_CC:-cc} "$@"
EOF
chmod +x "$work/bin/cc-no-openmp"
build_wheel cc CC="$work/bin/cc-no-openmp" REAL_CC="${CC:-cc}"
grep -q "WARNING: the compiler has no usable OpenMP" "$work/build-cc.log" \
  || fail "setup.py's probe did not report the missing OpenMP"
grep -q "cc-no-openmp: unsupported option" "$work/build-cc.log" || fail "the wrapper compiler was not used"
"$vpy" -m pip install "${pip_q[@]}" --force-reinstall --no-deps "$wheel"
check_installed
step "2. quick subset: tests/test_semantics.py"
(cd "$work/run" && "$vpy" -m pytest tests/test_semantics.py -p no:cacheprovider -q)

echo; echo "check_no_openmp: OK (CADAGRAD_NO_OPENMP=1 and a compiler without OpenMP)"
