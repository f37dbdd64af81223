# Every hot loop of cadagrad and the C-level step engine that feeds them, as a list of included files by
# role (each file uses only those above it).
#
# This file is compiled once per instruction set (see _kernels_generic.pyx, _kernels_avx2.pyx,
# _kernels_avx512.pyx and setup.py); cadagrad._kernels picks one at import. Every variant gives the same
# bits as cadagrad.reference (_rules.pxi says how, and what was checked of the vectorization).

# CPU features, OpenMP and compiler shims, compile flags; the thread setting and the fork flag, with the
# Python functions that read them (set/get_num_threads, has_openmp, cpu_features, data_address).
include "_platform.pxi"
# The update rules, each formula once: AdaGrad (element-wise and row-wise), SGD, the lr decay, proximal
# AdaGrad and AdaGrad dual averaging; the ceiling kernels (dense and sparse rows) and the non-finite scan.
include "_rules.pxi"
# 16-bit params: the float32 rules above on widened float16/bfloat16 values, rounded back once.
include "_half.pxi"
# The segment table, the one parallel walk over it, thread counts and split points.
include "_parallel.pxi"
# Sparse rows: grouping duplicate indices (RowGroups), the row walk.
include "_rows.pxi"
# The step engine: pointers kept, headers re-checked, each rule's arguments packed once.
include "_engine.pxi"
