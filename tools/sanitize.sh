#!/usr/bin/env bash
# Builds the kernels with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy of the repo and
# runs the test suite against that build (the sanitizer runtimes preloaded into the stock Python).
# Usage: tools/sanitize.sh [extra pytest args]. Needs gcc with libasan/libubsan (Debian's gcc has them).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== copying the tracked tree to $work"
(cd "$repo" && git ls-files -co --exclude-standard | grep -v -E '\.(so|c)$' | tar -cT - | tar -x -C "$work")

# The build needs Cython and NumPy >= 2 in this environment (pip's isolated build env is gone).
python -c "import Cython, numpy, sys; sys.exit(int(numpy.__version__.split('.')[0]) < 2)" 2>/dev/null \
  || python -m pip install --quiet "Cython>=3.0" "numpy>=2.0" "setuptools>=64"

flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
echo "== building with: $flags"
(cd "$work" && CADAGRAD_REQUIRE_OPENMP=1 CFLAGS="$flags" LDFLAGS="$flags" python setup.py -q build_ext --inplace 2>&1 \
  | grep -v -E "warning|^\s*$" || true)
shopt -s nullglob
built=("$work"/cadagrad/_kernels_*.so)
[ ${#built[@]} -gt 0 ] || { echo "the sanitizer build produced no extension"; exit 1; }
for so in "${built[@]}"; do      # instrumented for real, not silently plain
  # The symbol table is read whole first: `nm | grep -q` under pipefail fails when grep exits early and
  # nm, with a large table left to write, dies of SIGPIPE.
  symbols=$(nm -D "$so")
  grep -q __asan_report <<<"$symbols" || { echo "not instrumented: $so"; exit 1; }
  grep -q __ubsan_handle <<<"$symbols" || { echo "not instrumented: $so"; exit 1; }
done
PYTHONPATH="$work" LD_PRELOAD="$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
  python -c "import cadagrad; info = cadagrad.build_info(); print(info); assert info['openmp']"

asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
echo "== running the tests with $asan and $ubsan preloaded"
# Python itself is not instrumented and keeps memory until exit: leak reports would be about it, not us.
cd "$work"
LD_PRELOAD="$asan:$ubsan" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
PYTHONPATH="$work" \
  python -m pytest tests -q -p no:cacheprovider -x \
    --deselect tests/test_huge.py \
    --ignore tests/test_distributed.py \
    "$@"
echo "== sanitizers: clean"
