// C++ smoke test of the fastsmall ops for libtorch users (built by CMakeLists.txt,
// run by ctest and by tests/test_cmake.py). The ops are reached only through the
// dispatcher, as a libtorch program would call them, so this also checks that
// linking libfastsmall.so registers them. No test framework: every check prints
// a line on failure and the exit status is the number of failed checks (capped).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "../../csrc/cpu/rng.h"

namespace {

int g_passed = 0;
int g_failed = 0;

void fail(const std::string& name, const std::string& why) {
  ++g_failed;
  std::cout << "FAILED: " << name << ": " << why << std::endl;
}

// Runs one named check; an exception escaping it counts as a failure.
void run_check(const std::string& name, const std::function<void(std::string&)>& body) {
  std::string why;
  try {
    body(why);
  } catch (const c10::Error& e) {
    why = std::string("unexpected c10::Error: ") + e.what_without_backtrace();
  } catch (const std::exception& e) {
    why = std::string("unexpected exception: ") + e.what();
  }
  if (why.empty()) {
    ++g_passed;
  } else {
    fail(name, why);
  }
}

// Sets `why` when `actual` and `expected` differ (shape or value beyond tolerance).
void expect_close(std::string& why, const std::string& what, const at::Tensor& actual,
                  const at::Tensor& expected, double rtol, double atol) {
  if (!why.empty()) return;
  if (actual.sizes() != expected.sizes()) {
    std::ostringstream os;
    os << what << ": shape " << actual.sizes() << " != expected " << expected.sizes();
    why = os.str();
  } else if (actual.scalar_type() != expected.scalar_type()) {
    std::ostringstream os;
    os << what << ": dtype " << actual.scalar_type() << " != expected " << expected.scalar_type();
    why = os.str();
  } else if (!at::allclose(actual, expected, rtol, atol)) {
    std::ostringstream os;
    os << what << ": max abs difference " << (actual - expected).abs().max().item<double>()
       << " (rtol " << rtol << ", atol " << atol << ")";
    why = os.str();
  }
}

// Typed handles to the ops; findSchemaOrThrow fails loudly if an op is not registered.
template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

struct Ops {
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, c10::IntArrayRef)> kcs_forward =
      op<at::Tensor(const at::Tensor&, c10::IntArrayRef)>("fastsmall::kcs_forward");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, c10::IntArrayRef)> kcs_forward_backward =
      op<at::Tensor(const at::Tensor&, c10::IntArrayRef)>("fastsmall::kcs_forward_backward");
  c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef, double)>
      bone_decompose = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef, double)>(
          "fastsmall::bone_decompose");
  c10::TypedOperatorHandle<at::Tensor(const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                      const at::Tensor&, c10::IntArrayRef, double)>
      bone_decompose_backward =
          op<at::Tensor(const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
                        c10::IntArrayRef, double)>("fastsmall::bone_decompose_backward");
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, c10::IntArrayRef, const std::optional<at::Tensor>&)>
      kcs_inverse = op<at::Tensor(const at::Tensor&, c10::IntArrayRef, const std::optional<at::Tensor>&)>(
          "fastsmall::kcs_inverse");
  c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef)>
      kcs_inverse_backward = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef)>(
          "fastsmall::kcs_inverse_backward");
};

const std::vector<int64_t> kH36m16 = {-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 8, 10, 11, 8, 13, 14};

// Bone k runs from parent to child of the k-th non-root joint.
std::pair<at::Tensor, at::Tensor> bone_indices(const std::vector<int64_t>& parents) {
  std::vector<int64_t> parent_idx, child_idx;
  for (int64_t j = 0; j < static_cast<int64_t>(parents.size()); ++j) {
    if (parents[j] == -1) continue;
    parent_idx.push_back(parents[j]);
    child_idx.push_back(j);
  }
  return {at::tensor(parent_idx, at::kLong), at::tensor(child_idx, at::kLong)};
}

void test_dtype(const Ops& ops, at::ScalarType dtype, const std::vector<int64_t>& batch, int64_t D) {
  const std::vector<int64_t>& parents = kH36m16;
  const int64_t J = static_cast<int64_t>(parents.size());
  const bool dbl = dtype == at::kDouble;
  const double rtol = dbl ? 1e-10 : 1e-5, atol = dbl ? 1e-10 : 1e-5;
  // Sums over the whole batch accumulate rounding error: compare them more loosely.
  const double sum_rtol = dbl ? 1e-9 : 1e-4, sum_atol = dbl ? 1e-9 : 1e-3;

  std::ostringstream tag_os;
  tag_os << dtype << " batch " << c10::IntArrayRef(batch) << " D=" << D;
  const std::string tag = tag_os.str();

  std::vector<int64_t> shape = batch;
  shape.push_back(J);
  shape.push_back(D);
  const auto opts = at::TensorOptions().dtype(dtype);
  const at::Tensor x = at::randn(shape, opts);
  const auto indices = bone_indices(parents);  // (no structured bindings: lambdas capture these)
  const at::Tensor parent_idx = indices.first, child_idx = indices.second;
  const at::Tensor bones_ref = x.index_select(-2, parent_idx) - x.index_select(-2, child_idx);

  run_check("kcs_forward matches index_select reference [" + tag + "]", [&](std::string& why) {
    expect_close(why, "bones", ops.kcs_forward.call(x, parents), bones_ref, rtol, atol);
  });

  run_check("kcs_forward on a non-contiguous input [" + tag + "]", [&](std::string& why) {
    // Same values as x, stored with the joint and coordinate axes swapped.
    const at::Tensor xt = x.transpose(-1, -2).contiguous().transpose(-1, -2);
    if (xt.is_contiguous()) why = "test set-up: input is contiguous";
    expect_close(why, "bones", ops.kcs_forward.call(xt, parents), bones_ref, rtol, atol);
  });

  run_check("kcs_inverse(kcs_forward(x)) without root [" + tag + "]", [&](std::string& why) {
    const at::Tensor bones = ops.kcs_forward.call(x, parents);
    expect_close(why, "x", ops.kcs_inverse.call(bones, parents, std::nullopt), x - x.narrow(-2, 0, 1), rtol,
                 atol);
  });

  run_check("kcs_inverse(kcs_forward(x), root) [" + tag + "]", [&](std::string& why) {
    const at::Tensor bones = ops.kcs_forward.call(x, parents);
    const std::optional<at::Tensor> root = x.narrow(-2, 0, 1);
    expect_close(why, "x", ops.kcs_inverse.call(bones, parents, root), x, rtol, atol);
  });

  run_check("bone_decompose: unit * length == bones, length == norm [" + tag + "]", [&](std::string& why) {
    const auto [unit, length] = ops.bone_decompose.call(x, parents, 0.0);
    expect_close(why, "length", length, bones_ref.norm(2, {-1}, /*keepdim=*/true), rtol, atol);
    expect_close(why, "unit * length", unit * length, bones_ref, rtol, atol);
  });

  run_check("kcs_forward_backward is the adjoint of kcs_forward [" + tag + "]", [&](std::string& why) {
    const at::Tensor g = at::randn_like(bones_ref);
    const at::Tensor lhs = (ops.kcs_forward.call(x, parents) * g).sum();
    const at::Tensor rhs = (x * ops.kcs_forward_backward.call(g, parents)).sum();
    expect_close(why, "<kcs_forward(x), g> vs <x, kcs_forward_backward(g)>", lhs, rhs, sum_rtol, sum_atol);
  });

  run_check("kcs_inverse_backward is the adjoint of kcs_inverse [" + tag + "]", [&](std::string& why) {
    const at::Tensor bones = at::randn_like(bones_ref);
    const at::Tensor root = at::randn_like(x.narrow(-2, 0, 1));
    const at::Tensor g = at::randn_like(x);
    const auto [g_bones, g_root] = ops.kcs_inverse_backward.call(g, parents);
    const at::Tensor lhs = (ops.kcs_inverse.call(bones, parents, root) * g).sum();
    const at::Tensor rhs = (bones * g_bones).sum() + (root * g_root).sum();
    expect_close(why, "<kcs_inverse(b, r), g> vs <b, gb> + <r, gr>", lhs, rhs, sum_rtol, sum_atol);
  });

  run_check("bone_decompose_backward matches autograd [" + tag + "]", [&](std::string& why) {
    const at::Tensor xg = x.detach().clone().requires_grad_(true);
    const at::Tensor b = xg.index_select(-2, parent_idx) - xg.index_select(-2, child_idx);
    const at::Tensor length = b.norm(2, {-1}, /*keepdim=*/true);
    const at::Tensor unit = b / length;
    const at::Tensor gu = at::randn_like(unit).detach();
    const at::Tensor gl = at::randn_like(length).detach();
    ((unit * gu).sum() + (length * gl).sum()).backward();
    const at::Tensor expected = xg.grad().detach();
    expect_close(why, "grad_x", ops.bone_decompose_backward.call(gu, gl, x, parents, 0.0), expected, rtol * 10,
                 atol * 10);
  });
}

void test_invalid_parents(const Ops& ops) {
  run_check("two roots raise c10::Error mentioning the root", [&](std::string& why) {
    const std::vector<int64_t> two_roots = {-1, 0, -1, 2};
    const at::Tensor x = at::randn({2, 4, 3});
    try {
      ops.kcs_forward.call(x, two_roots);
      why = "no error raised";
    } catch (const c10::Error& e) {
      const std::string msg = e.what_without_backtrace();
      if (msg.find("root") == std::string::npos) why = "message does not mention the root: " + msg;
    }
  });
}

}  // namespace

// The counter-based RNG's run of draws (csrc/cpu/rng.h draw_bits: 32-bit lanes while the high word of
// the counter is fixed, the 64-bit counter across a multiple of 2^32) against draw_bit element by
// element, at runs that end before, at and across 2^32 and 2^33 (no tensor of the tests is that large).
void test_rng_runs() {
  run_check("draw_bits == draw_bit around 2^32", [](std::string& why) {
    const fastsmall::Key key = fastsmall::stream_key({1u, 2u, 3u});
    uint32_t run[300];
    for (const int64_t e0 : {int64_t(0), (int64_t(1) << 32) - 300, (int64_t(1) << 32) - 100, int64_t(1) << 32,
                             (int64_t(1) << 33) - 7, (int64_t(5) << 32) + 11}) {
      fastsmall::draw_bits(key, e0, 300, run);
      for (int64_t i = 0; i < 300 && why.empty(); ++i)
        if (run[i] != fastsmall::draw_bit(key, static_cast<uint64_t>(e0 + i)))
          why = "element " + std::to_string(e0 + i) + " differs";
    }
  });
}

int main() {
  std::cout << "fastsmall C++ tests: ATen threads = " << at::get_num_threads() << std::endl;
  try {
    const Ops ops;
    at::manual_seed(0);
    for (const at::ScalarType dtype : {at::kFloat, at::kDouble}) {
      test_dtype(ops, dtype, {4, 5}, 3);
      test_dtype(ops, dtype, {7}, 2);
      test_dtype(ops, dtype, {2048}, 3);  // several at::parallel_for chunks
    }
    test_invalid_parents(ops);
    test_rng_runs();
  } catch (const c10::Error& e) {
    fail("set-up", std::string("c10::Error: ") + e.what_without_backtrace() +
                       " (is libfastsmall.so linked with --no-as-needed, so that its ops are registered?)");
  } catch (const std::exception& e) {
    fail("set-up", std::string("exception: ") + e.what());
  }
  std::cout << "fastsmall C++ tests: " << g_passed << " passed, " << g_failed << " failed" << std::endl;
  return g_failed == 0 ? 0 : std::min(g_failed, 100);
}
