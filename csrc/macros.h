// Compiler macros shared by the CPU kernels.
#pragma once

// Force-inlined helpers: the SIMD and per-tile helpers are compiled into each caller, so that a
// caller compiled for another instruction set (a target("avx2") wrapper, a target_clones clone)
// compiles all of their code for that instruction set too, not the build's baseline.
#if defined(__GNUC__)
#define FASTSMALL_INLINE inline __attribute__((always_inline))
#else
#define FASTSMALL_INLINE inline
#endif
