"""Build of cadagrad's compiled kernels.

One Cython source (cadagrad/_kernels.pxi, which includes the other files of KERNEL_SOURCES in order) is
compiled once per instruction set: a portable ``generic`` module and, on x86-64 compilers that accept the
flags, ``avx2`` and ``avx512`` variants that cadagrad._kernels picks at import after asking the CPU. Every
variant uses exact IEEE arithmetic (no -ffast-math, no FMA contraction), so all give the same bits.

Environment variables read at build time:

CADAGRAD_NO_OPENMP=1       build serially even where the compiler has OpenMP
CADAGRAD_REQUIRE_OPENMP=1  fail the build if the compiler has no OpenMP (CI sets it)
CADAGRAD_NATIVE=1          one variant compiled with -march=native, for local use only (not for wheels)
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BASE_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off"]
# What every variant includes: editing any of these rebuilds all of them.
KERNEL_SOURCES = [
    "cadagrad/_kernels.pxi",
    "cadagrad/_platform.pxi",
    "cadagrad/_rules.pxi",
    "cadagrad/_half.pxi",
    "cadagrad/_parallel.pxi",
    "cadagrad/_rows.pxi",
    "cadagrad/_engine.pxi",
]
ISA_FLAGS = {
    "generic": [],
    # -mf16c: float16 params convert with vcvtph2ps/vcvtps2ph (cadagrad._kernels checks the CPU for it).
    "avx2": ["-mavx2", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512vl", "-mf16c", "-mprefer-vector-width=512"],
}
# OpenMP flags to try, in order, as (compile, link): GCC and LLVM clang; then Apple's clang, whose driver
# refuses -fopenmp, with libomp (Homebrew's: its include and lib directories come from CPPFLAGS and LDFLAGS,
# which pyproject.toml's [tool.cibuildwheel.macos] sets).
OPENMP_FLAG_SETS = [
    (["-fopenmp"], ["-fopenmp"]),
    (["-Xpreprocessor", "-fopenmp"], ["-lomp"]),
]

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n > 0 && omp_get_max_threads() > 0);
        return 0;
    }
    """
)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class BuildExt(build_ext):
    """Cythonizes at build time, probes the compiler, and sets each variant's flags."""

    def finalize_options(self):
        from Cython.Build import cythonize

        self.distribution.ext_modules = cythonize(
            self.distribution.ext_modules, compiler_directives={"language_level": 3}
        )
        super().finalize_options()

    def _compiles(self, source, flags, *, link_flags=None, run=False):
        tmp = tempfile.mkdtemp(prefix="cadagrad-probe-")
        try:
            path = os.path.join(tmp, "probe.c")
            with open(path, "w") as f:
                f.write(source)
            objects = self.compiler.compile([path], output_dir=tmp, extra_postargs=flags)
            if not run:
                return True
            exe = os.path.join(tmp, "probe")
            # distutils links executables without $LDFLAGS; the extensions get them, so the probe does.
            link = (flags if link_flags is None else link_flags) + os.environ.get("LDFLAGS", "").split()
            self.compiler.link_executable(objects, exe, extra_postargs=link)
            return subprocess.run([exe], capture_output=True, text=True, timeout=60).stdout.strip() == "1"
        except Exception:
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def build_extensions(self):
        openmp_compile, openmp_link = [], []
        if _env_flag("CADAGRAD_NO_OPENMP"):
            print("cadagrad: CADAGRAD_NO_OPENMP is set: building without OpenMP (serial steps)")
        else:
            for compile_flags, link_flags in OPENMP_FLAG_SETS:
                if self._compiles(OPENMP_PROBE, compile_flags, link_flags=link_flags, run=True):
                    openmp_compile, openmp_link = compile_flags, link_flags
                    print("cadagrad: OpenMP: compile with", *compile_flags, "and link with", *link_flags)
                    break
            else:
                if _env_flag("CADAGRAD_REQUIRE_OPENMP"):
                    sys.exit(
                        "cadagrad: CADAGRAD_REQUIRE_OPENMP is set but the compiler cannot build OpenMP code"
                    )
                print("cadagrad: WARNING: the compiler has no usable OpenMP; building serial kernels")

        native = _env_flag("CADAGRAD_NATIVE")
        kept = []
        for ext in self.extensions:
            isa = ext.name.rsplit("_", 1)[-1]
            if native:
                if isa != "generic":
                    continue
                isa_flags = ["-march=native"]
            else:
                isa_flags = ISA_FLAGS[isa]
                if isa_flags and not self._compiles("int main(void) { return 0; }\n", isa_flags):
                    print(f"cadagrad: the compiler does not take {' '.join(isa_flags)}: no {isa} variant")
                    continue
            flags = BASE_FLAGS + isa_flags + openmp_compile
            ext.extra_compile_args = flags
            ext.extra_link_args = openmp_link
            ext.define_macros = [
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                ("CG_COMPILE_FLAGS", '"' + " ".join(flags) + '"'),
            ]
            kept.append(ext)
        self.extensions = kept
        super().build_extensions()


def _variant(isa):
    return Extension(
        f"cadagrad._kernels_{isa}",
        sources=[f"cadagrad/_kernels_{isa}.pyx"],
        depends=KERNEL_SOURCES,
        include_dirs=[numpy.get_include()],
    )


setup(
    ext_modules=[_variant(isa) for isa in ISA_FLAGS],
    cmdclass={"build_ext": BuildExt},
)
