// The Python module fastsmall._C. Importing it runs the TORCH_LIBRARY
// registrations of the other translation units; build_info() reports how the
// extension was compiled so fastsmall.info can show it and a mismatch with
// the installed torch can be caught with a readable message.
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/version.h>

#include "cpu/isa.h"

#ifndef FASTSMALL_CXX_FLAGS
#define FASTSMALL_CXX_FLAGS "unknown"
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                          "." + std::to_string(TORCH_VERSION_PATCH);
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["aten_parallel_openmp"] = static_cast<bool>(AT_PARALLEL_OPENMP);
  info["compiler"] = std::string(__VERSION__);
  info["cxx_flags"] = std::string(FASTSMALL_CXX_FLAGS);
  info["num_threads"] = at::get_num_threads();
  // The instruction set the CPU kernels written on vectors run with (isa.h: the widest this CPU has,
  // chosen once, capped by FASTSMALL_SIMD_BYTES); the auto-vectorised re-initialisation kernels pick
  // AVX2 or the baseline the same way (GCC target_clones).
  const int bytes = fastsmall::simd_bytes();
  info["cpu_kernel_isa"] = bytes == 64 ? "AVX-512" : bytes == 32 ? "AVX2+FMA" : "baseline (SSE2)";
  info["cpu_kernel_vector_bytes"] = bytes;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastsmall C++ operators (registered as torch.ops.fastsmall.*)";
  m.def("build_info", &build_info, "How this extension was compiled.");
}
