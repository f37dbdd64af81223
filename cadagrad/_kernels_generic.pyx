# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# The kernels compiled for the generic instruction set (flags in setup.py); cadagrad._kernels picks one.
include "_kernels.pxi"

ISA = "generic"
