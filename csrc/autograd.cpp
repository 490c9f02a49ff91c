// Autograd kernels of the ops called at small batches, in C++ (the `Autograd` dispatch key: every device).
//
// Why C++: at the batch sizes the methods use (PoseAug: 1,024 poses) a kernel takes a few
// microseconds, and torch.library.register_autograd's Python layer (an autograd.Function built per
// call, its setup_context and backward in Python) added 10-60 us per op -- more than the kernel.
// These kernels are what torchvision does for its C++ ops: a torch::autograd::Function whose
// forward redispatches below autograd to the device kernel (C++ on CPU, the Triton launcher on
// CUDA) and whose backward calls the op's dedicated *_backward op through the dispatcher, so
// that with create_graph=True the backward op's own autograd kernel records it: double backward
// of the linear ops is their adjoint, and the others raise the error the Python formulas raise.
//
// The formulas are those of fastsmall/ops/<family>.py (OpDef.formulas), which stay the formulas
// of the Triton-direct route (Triton under TRITON_INTERPRET=1, or CUDA without this extension);
// tests/test_autograd_kernels.py checks these kernels against them bit for bit, each family's
// tests check every route against the reference. fastsmall/ops/_dispatch.py registers a Python
// formula only for an op that has no kernel here. The .out overloads' kernels (at the end) refuse
// gradients, as aten's out= functions, and move the outputs' version counters.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

namespace fastsmall {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

// NAME_op(): the typed handle of the registered op fastsmall::NAME, looked up once.
#define FASTSMALL_OP(NAME, ...)                                                            \
  const c10::TypedOperatorHandle<__VA_ARGS__>& NAME##_op() {                             \
    static const auto handle =                                                            \
        c10::Dispatcher::singleton().findSchemaOrThrow("fastsmall::" #NAME, "").typed<__VA_ARGS__>(); \
    return handle;                                                                        \
  }

FASTSMALL_OP(kcs_forward, Tensor(const Tensor&, c10::IntArrayRef))
FASTSMALL_OP(kcs_forward_backward, Tensor(const Tensor&, c10::IntArrayRef))
FASTSMALL_OP(bone_decompose, std::tuple<Tensor, Tensor>(const Tensor&, c10::IntArrayRef, double))
FASTSMALL_OP(bone_decompose_backward,
             Tensor(const OptTensor&, const OptTensor&, const Tensor&, c10::IntArrayRef, double))
FASTSMALL_OP(kcs_inverse, Tensor(const Tensor&, c10::IntArrayRef, const OptTensor&))
FASTSMALL_OP(kcs_inverse_backward, std::tuple<Tensor, Tensor>(const Tensor&, c10::IntArrayRef))
FASTSMALL_OP(part_kcs_gram, Tensor(const Tensor&, c10::IntArrayRef, c10::IntArrayRef, bool))
FASTSMALL_OP(part_kcs_gram_backward,
             Tensor(const Tensor&, const Tensor&, c10::IntArrayRef, c10::IntArrayRef, bool))
FASTSMALL_OP(masked_cross_entropy, Tensor(const Tensor&, const Tensor&, const Tensor&))
FASTSMALL_OP(distribution_align, std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                         double, double, double, bool))
FASTSMALL_OP(softmax_batch_mean, Tensor(const Tensor&))
FASTSMALL_OP(masked_cross_entropy_backward, Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&))
FASTSMALL_OP(bn_act_dropout,
             std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                                                const OptTensor&, const OptTensor&, const Tensor&, double, double, double))
FASTSMALL_OP(bn_act_dropout_backward,
             std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                                const Tensor&, const Tensor&, const Tensor&, bool, double, double,
                                                double))
#undef FASTSMALL_OP

#define FASTSMALL_OUT_OP(NAME, ...)                                                                  \
  const c10::TypedOperatorHandle<__VA_ARGS__>& NAME##_out_op() {                                      \
    static const auto handle =                                                                        \
        c10::Dispatcher::singleton().findSchemaOrThrow("fastsmall::" #NAME, "out").typed<__VA_ARGS__>(); \
    return handle;                                                                                    \
  }

FASTSMALL_OUT_OP(kcs_forward, void(const Tensor&, c10::IntArrayRef, const Tensor&))
FASTSMALL_OUT_OP(bone_decompose, void(const Tensor&, c10::IntArrayRef, double, const Tensor&, const Tensor&))
FASTSMALL_OUT_OP(kcs_inverse, void(const Tensor&, c10::IntArrayRef, const OptTensor&, const Tensor&))
FASTSMALL_OUT_OP(part_kcs_gram, void(const Tensor&, c10::IntArrayRef, c10::IntArrayRef, bool, const Tensor&))
#undef FASTSMALL_OUT_OP

OptTensor defined_or_none(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// A backward formula's call of a backward op: through the op's autograd kernel (Function::apply,
// which records it) only when the backward itself is differentiated (create_graph=True: grad mode
// on); otherwise straight to the device kernel below autograd, without building a node.
// (Single-output ops: Function::apply and the op return a Tensor alike.)
template <class BackwardFunction, class Op, class... Args>
Tensor call_backward(const Op& op, const Args&... args) {
  if (at::GradMode::is_enabled()) return BackwardFunction::apply(args...);
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(args...);
}

// The error of a backward op without a derivative of its own, word for word that of
// fastsmall.ops._dispatch.no_double_backward (the tests match it on every backend).
[[noreturn]] void no_double_backward(const char* op, const char* why) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "double backward through fastsmall.ops.", op,
                              " is not implemented; use backend='reference' ", why);
}

// A backward op's autograd kernel when it has no derivative: the first backward records it,
// differentiating it (double backward) raises.
template <class Self>
struct NotTwiceDifferentiable : torch::autograd::Function<Self> {
  static variable_list backward(AutogradContext*, variable_list) {
    no_double_backward(Self::kOp, Self::kWhy);
  }
};

// ---- KCS family (fastsmall/ops/kcs.py) -------------------------------------------------------

struct KcsForward : torch::autograd::Function<KcsForward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, c10::IntArrayRef parents);
  static variable_list backward(AutogradContext* ctx, variable_list grads);
};

// The adjoint of kcs_forward; its derivative is kcs_forward again (both are linear).
struct KcsForwardBackward : torch::autograd::Function<KcsForwardBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& grad_bones, c10::IntArrayRef parents) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["parents"] = parents.vec();
    return kcs_forward_backward_op().call(grad_bones, parents);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto parents = ctx->saved_data["parents"].toIntVector();
    return {call_backward<KcsForward>(kcs_forward_op(), grads[0], c10::IntArrayRef(parents)), Tensor()};
  }
};

Tensor KcsForward::forward(AutogradContext* ctx, const Tensor& x, c10::IntArrayRef parents) {
  at::AutoDispatchBelowADInplaceOrView guard;
  ctx->saved_data["parents"] = parents.vec();
  return kcs_forward_op().call(x, parents);
}

variable_list KcsForward::backward(AutogradContext* ctx, variable_list grads) {
  const auto parents = ctx->saved_data["parents"].toIntVector();
  return {call_backward<KcsForwardBackward>(kcs_forward_backward_op(), grads[0], c10::IntArrayRef(parents)),
          Tensor()};
}

struct BoneDecomposeBackward : NotTwiceDifferentiable<BoneDecomposeBackward> {
  static constexpr const char* kOp = "bone_decompose";
  static constexpr const char* kWhy = "for higher-order gradients";
  static Tensor forward(AutogradContext*, const OptTensor& grad_unit, const OptTensor& grad_length, const Tensor& x,
                        c10::IntArrayRef parents, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return bone_decompose_backward_op().call(grad_unit, grad_length, x, parents, eps);
  }
};

struct BoneDecompose : torch::autograd::Function<BoneDecompose> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, c10::IntArrayRef parents, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["parents"] = parents.vec();
    ctx->saved_data["eps"] = eps;
    ctx->save_for_backward({x});
    ctx->set_materialize_grads(false);  // an unused output costs no zeros tensor
    auto [unit, length] = bone_decompose_op().call(x, parents, eps);
    return {unit, length};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& grad_unit = grads[0];
    const Tensor& grad_length = grads[1];
    if (!ctx->needs_input_grad(0) || (!grad_unit.defined() && !grad_length.defined())) {
      return {Tensor(), Tensor(), Tensor()};
    }
    Tensor x = ctx->get_saved_variables()[0];
    const auto parents = ctx->saved_data["parents"].toIntVector();
    return {call_backward<BoneDecomposeBackward>(bone_decompose_backward_op(), defined_or_none(grad_unit),
                                                 defined_or_none(grad_length), x, c10::IntArrayRef(parents),
                                                 ctx->saved_data["eps"].toDouble()),
            Tensor(), Tensor()};
  }
};

struct KcsInverse : torch::autograd::Function<KcsInverse> {
  static Tensor forward(AutogradContext* ctx, const Tensor& bones, c10::IntArrayRef parents, const OptTensor& root);
  static variable_list backward(AutogradContext* ctx, variable_list grads);
};

// The adjoint of kcs_inverse: (grad_bones, grad_root); its derivative is kcs_inverse again.
struct KcsInverseBackward : torch::autograd::Function<KcsInverseBackward> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad_x, c10::IntArrayRef parents) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["parents"] = parents.vec();
    auto [grad_bones, grad_root] = kcs_inverse_backward_op().call(grad_x, parents);
    return {grad_bones, grad_root};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto parents = ctx->saved_data["parents"].toIntVector();
    return {call_backward<KcsInverse>(kcs_inverse_op(), grads[0], c10::IntArrayRef(parents), OptTensor(grads[1])),
            Tensor()};
  }
};

Tensor KcsInverse::forward(AutogradContext* ctx, const Tensor& bones, c10::IntArrayRef parents,
                           const OptTensor& root) {
  at::AutoDispatchBelowADInplaceOrView guard;
  ctx->saved_data["parents"] = parents.vec();
  ctx->saved_data["has_root"] = root.has_value() && root->defined();
  return kcs_inverse_op().call(bones, parents, root);
}

variable_list KcsInverse::backward(AutogradContext* ctx, variable_list grads) {
  const auto parents = ctx->saved_data["parents"].toIntVector();
  Tensor grad_bones, grad_root;
  if (at::GradMode::is_enabled()) {  // see call_backward
    variable_list g = KcsInverseBackward::apply(grads[0], c10::IntArrayRef(parents));
    grad_bones = g[0];
    grad_root = g[1];
  } else {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(grad_bones, grad_root) = kcs_inverse_backward_op().call(grads[0], parents);
  }
  return {grad_bones, Tensor(), ctx->saved_data["has_root"].toBool() ? grad_root : Tensor()};
}

// ---- part-aware KCS Gram (fastsmall/ops/part_kcs_gram.py) -------------------------------------

struct PartKcsGramBackward : NotTwiceDifferentiable<PartKcsGramBackward> {
  static constexpr const char* kOp = "part_kcs_gram";
  static constexpr const char* kWhy = "for higher-order gradients (e.g. a gradient penalty)";
  static Tensor forward(AutogradContext*, const Tensor& grad, const Tensor& bones, c10::IntArrayRef part_bones,
                        c10::IntArrayRef part_sizes, bool compact) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return part_kcs_gram_backward_op().call(grad, bones, part_bones, part_sizes, compact);
  }
};

struct PartKcsGram : torch::autograd::Function<PartKcsGram> {
  static Tensor forward(AutogradContext* ctx, const Tensor& bones, c10::IntArrayRef part_bones,
                        c10::IntArrayRef part_sizes, bool compact) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["part_bones"] = part_bones.vec();
    ctx->saved_data["part_sizes"] = part_sizes.vec();
    ctx->saved_data["compact"] = compact;
    ctx->save_for_backward({bones});
    return part_kcs_gram_op().call(bones, part_bones, part_sizes, compact);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Tensor bones = ctx->get_saved_variables()[0];
    const auto part_bones = ctx->saved_data["part_bones"].toIntVector();
    const auto part_sizes = ctx->saved_data["part_sizes"].toIntVector();
    return {call_backward<PartKcsGramBackward>(part_kcs_gram_backward_op(), grads[0], bones,
                                               c10::IntArrayRef(part_bones), c10::IntArrayRef(part_sizes),
                                               ctx->saved_data["compact"].toBool()),
            Tensor(), Tensor(), Tensor()};
  }
};

// ---- masked cross-entropy (fastsmall/ops/distribution_align.py) --------------------------------

struct MaskedCrossEntropyBackward : NotTwiceDifferentiable<MaskedCrossEntropyBackward> {
  static constexpr const char* kOp = "masked_cross_entropy";
  static constexpr const char* kWhy = "for higher-order gradients";
  static Tensor forward(AutogradContext*, const Tensor& grad, const Tensor& logits, const Tensor& target,
                        const Tensor& mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return masked_cross_entropy_backward_op().call(grad, logits, target, mask);
  }
};

struct MaskedCrossEntropy : torch::autograd::Function<MaskedCrossEntropy> {
  static Tensor forward(AutogradContext* ctx, const Tensor& logits, const Tensor& target, const Tensor& mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({logits, target, mask});
    return masked_cross_entropy_op().call(logits, target, mask);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!ctx->needs_input_grad(0)) return {Tensor(), Tensor(), Tensor()};
    auto saved = ctx->get_saved_variables();
    // target and mask are the pseudo-label path: no gradient flows into them
    return {call_backward<MaskedCrossEntropyBackward>(masked_cross_entropy_backward_op(), grads[0], saved[0], saved[1],
                                                      saved[2]),
            Tensor(), Tensor()};
  }
};

// ---- the MLP-block tail (fastsmall/ops/bn_act_dropout.py) ---------------------------------------------
// Called once per BatchNorm of a model, several times a step: measured at [64, 32] (one thread), the
// Python formulas took ~170 us per forward + backward around ~30 us of kernels.

struct BnActDropoutBackward : torch::autograd::Function<BnActDropoutBackward> {
  static constexpr const char* kOp = "bn_act_dropout";
  static constexpr const char* kWhy = "for higher-order gradients";
  static variable_list forward(AutogradContext*, const Tensor& grad, const Tensor& y, const OptTensor& weight,
                               const OptTensor& bias, const Tensor& mean, const Tensor& var, const Tensor& seed,
                               bool batch_stats, double eps, double negative_slope, double p) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_y, grad_w, grad_b] = bn_act_dropout_backward_op().call(grad, y, weight, bias, mean, var, seed,
                                                                      batch_stats, eps, negative_slope, p);
    return {grad_y, grad_w, grad_b};
  }
  static variable_list backward(AutogradContext*, variable_list) { no_double_backward(kOp, kWhy); }
};

// Outputs (out, mean, var): the statistics the forward normalised with are not differentiable (the
// running statistics are buffers); gradients flow to y, weight, bias and residual.
struct BnActDropout : torch::autograd::Function<BnActDropout> {
  static variable_list forward(AutogradContext* ctx, const Tensor& y, const OptTensor& weight, const OptTensor& bias,
                               const OptTensor& mean, const OptTensor& var, const OptTensor& residual,
                               const Tensor& seed, double eps, double negative_slope, double p) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, used_mean, used_var] = bn_act_dropout_op().call(y, weight, bias, mean, var, residual, seed, eps,
                                                               negative_slope, p);
    ctx->mark_non_differentiable({used_mean, used_var});
    ctx->saved_data["batch_stats"] = !(mean.has_value() && mean->defined());
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["negative_slope"] = negative_slope;
    ctx->saved_data["p"] = p;
    // needs_input_grad counts the tensor arguments given (an absent optional is no input edge):
    // the edge of weight, bias and residual among y, weight?, bias?, mean?, var?, residual?, seed
    const auto given = [](const OptTensor& t) -> int64_t { return t.has_value() && t->defined() ? 1 : 0; };
    ctx->saved_data["edge_w"] = given(weight) ? int64_t(1) : int64_t(-1);
    ctx->saved_data["edge_b"] = given(bias) ? 1 + given(weight) : int64_t(-1);
    ctx->saved_data["edge_r"] = given(residual) ? 1 + given(weight) + given(bias) + given(mean) + given(var) : int64_t(-1);
    ctx->save_for_backward({y, weight.value_or(Tensor()), bias.value_or(Tensor()), used_mean, used_var, seed});
    return {out, used_mean, used_var};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &y = saved[0], &weight = saved[1], &bias = saved[2];  // weight / bias: undefined if not given
    const Tensor grad = grads[0].contiguous();
    const OptTensor w = defined_or_none(weight), b = defined_or_none(bias);
    const bool batch_stats = ctx->saved_data["batch_stats"].toBool();
    const double eps = ctx->saved_data["eps"].toDouble(), slope = ctx->saved_data["negative_slope"].toDouble(),
                 p = ctx->saved_data["p"].toDouble();
    Tensor grad_y, grad_w, grad_b;
    if (at::GradMode::is_enabled()) {  // see call_backward
      variable_list g = BnActDropoutBackward::apply(grad, y, w, b, saved[3], saved[4], saved[5], batch_stats, eps,
                                                    slope, p);
      grad_y = g[0], grad_w = g[1], grad_b = g[2];
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(grad_y, grad_w, grad_b) = bn_act_dropout_backward_op().call(grad, y, w, b, saved[3], saved[4], saved[5],
                                                                           batch_stats, eps, slope, p);
    }
    const auto needs = [&](const char* edge) {
      const int64_t e = ctx->saved_data[edge].toInt();
      return e >= 0 && ctx->needs_input_grad(static_cast<size_t>(e));
    };
    // the parameters' gradients come in the compute dtype: back to each parameter's own dtype
    return {ctx->needs_input_grad(0) ? grad_y : Tensor(),
            needs("edge_w") ? grad_w.to(weight.scalar_type()) : Tensor(),
            needs("edge_b") ? grad_b.to(bias.scalar_type()) : Tensor(),
            Tensor(), Tensor(),
            needs("edge_r") ? grads[0] : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor, Tensor> bn_act_dropout_autograd(const Tensor& y, const OptTensor& weight,
                                                           const OptTensor& bias, const OptTensor& mean,
                                                           const OptTensor& var, const OptTensor& residual,
                                                           const Tensor& seed, double eps, double negative_slope,
                                                           double p) {
  auto out = BnActDropout::apply(y, weight, bias, mean, var, residual, seed, eps, negative_slope, p);
  return {out[0], out[1], out[2]};
}

std::tuple<Tensor, Tensor, Tensor> bn_act_dropout_backward_autograd(const Tensor& grad, const Tensor& y,
                                                                    const OptTensor& weight, const OptTensor& bias,
                                                                    const Tensor& mean, const Tensor& var,
                                                                    const Tensor& seed, bool batch_stats, double eps,
                                                                    double negative_slope, double p) {
  auto out = BnActDropoutBackward::apply(grad, y, weight, bias, mean, var, seed, batch_stats, eps, negative_slope, p);
  return {out[0], out[1], out[2]};
}

// ---- distribution alignment (fastsmall/ops/distribution_align.py): targets, never differentiated ----
// Computed below autograd, so their outputs require no grad whatever the logits do (as aten's
// argmax); the Python formulas marked them non-differentiable, at the Python layer's cost on
// every call.

std::tuple<Tensor, Tensor, Tensor, Tensor> distribution_align_autograd(const Tensor& logits, const Tensor& prior,
                                                                       const Tensor& running, double temperature,
                                                                       double threshold, double eps,
                                                                       bool return_probs) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return distribution_align_op().call(logits, prior, running, temperature, threshold, eps, return_probs);
}

Tensor softmax_batch_mean_autograd(const Tensor& logits) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return softmax_batch_mean_op().call(logits);
}

// ---- the kernels: the ops' signatures, tuples where the schema returns several tensors ----------

Tensor kcs_forward_autograd(const Tensor& x, c10::IntArrayRef parents) { return KcsForward::apply(x, parents); }

Tensor kcs_forward_backward_autograd(const Tensor& grad_bones, c10::IntArrayRef parents) {
  return KcsForwardBackward::apply(grad_bones, parents);
}

std::tuple<Tensor, Tensor> bone_decompose_autograd(const Tensor& x, c10::IntArrayRef parents, double eps) {
  auto out = BoneDecompose::apply(x, parents, eps);
  return {out[0], out[1]};
}

Tensor bone_decompose_backward_autograd(const OptTensor& grad_unit, const OptTensor& grad_length, const Tensor& x,
                                        c10::IntArrayRef parents, double eps) {
  return BoneDecomposeBackward::apply(grad_unit, grad_length, x, parents, eps);
}

Tensor kcs_inverse_autograd(const Tensor& bones, c10::IntArrayRef parents, const OptTensor& root) {
  return KcsInverse::apply(bones, parents, root);
}

std::tuple<Tensor, Tensor> kcs_inverse_backward_autograd(const Tensor& grad_x, c10::IntArrayRef parents) {
  auto out = KcsInverseBackward::apply(grad_x, parents);
  return {out[0], out[1]};
}

Tensor part_kcs_gram_autograd(const Tensor& bones, c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes,
                              bool compact) {
  return PartKcsGram::apply(bones, part_bones, part_sizes, compact);
}

Tensor part_kcs_gram_backward_autograd(const Tensor& grad, const Tensor& bones, c10::IntArrayRef part_bones,
                                       c10::IntArrayRef part_sizes, bool compact) {
  return PartKcsGramBackward::apply(grad, bones, part_bones, part_sizes, compact);
}

Tensor masked_cross_entropy_autograd(const Tensor& logits, const Tensor& target, const Tensor& mask) {
  return MaskedCrossEntropy::apply(logits, target, mask);
}

Tensor masked_cross_entropy_backward_autograd(const Tensor& grad, const Tensor& logits, const Tensor& target,
                                              const Tensor& mask) {
  return MaskedCrossEntropyBackward::apply(grad, logits, target, mask);
}

// ---- .out overloads: bulk use, no autograd (as aten's out= functions) -------------------------------

void refuse_grad(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && t.defined() && t.requires_grad()), "fastsmall.ops.", op,
              ": out= is for bulk use without autograd, but ", name,
              " requires grad; call it without out= or under torch.no_grad()");
}

// The written tensors' version counters move, as after any in-place op (what an ADInplaceOrView
// kernel does), so autograd notices an overwritten tensor that a graph saved.
void bump(const Tensor& t) { torch::autograd::impl::bump_version(t); }

void kcs_forward_out_autograd(const Tensor& x, c10::IntArrayRef parents, const Tensor& out) {
  refuse_grad("kcs_forward", "x", x);
  refuse_grad("kcs_forward", "out", out);
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    kcs_forward_out_op().call(x, parents, out);
  }
  bump(out);
}

void bone_decompose_out_autograd(const Tensor& x, c10::IntArrayRef parents, double eps, const Tensor& unit,
                                 const Tensor& length) {
  refuse_grad("bone_decompose", "x", x);
  refuse_grad("bone_decompose", "unit", unit);
  refuse_grad("bone_decompose", "length", length);
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    bone_decompose_out_op().call(x, parents, eps, unit, length);
  }
  bump(unit);
  bump(length);
}

void kcs_inverse_out_autograd(const Tensor& bones, c10::IntArrayRef parents, const OptTensor& root, const Tensor& out) {
  refuse_grad("kcs_inverse", "bones", bones);
  if (root.has_value()) refuse_grad("kcs_inverse", "root", *root);
  refuse_grad("kcs_inverse", "out", out);
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    kcs_inverse_out_op().call(bones, parents, root, out);
  }
  bump(out);
}

void part_kcs_gram_out_autograd(const Tensor& bones, c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes,
                                bool compact, const Tensor& out) {
  refuse_grad("part_kcs_gram", "bones", bones);
  refuse_grad("part_kcs_gram", "out", out);
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    part_kcs_gram_out_op().call(bones, part_bones, part_sizes, compact, out);
  }
  bump(out);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastsmall, Autograd, m) {
  m.impl("kcs_forward.out", kcs_forward_out_autograd);
  m.impl("bone_decompose.out", bone_decompose_out_autograd);
  m.impl("kcs_inverse.out", kcs_inverse_out_autograd);
  m.impl("part_kcs_gram.out", part_kcs_gram_out_autograd);
  m.impl("kcs_forward", kcs_forward_autograd);
  m.impl("kcs_forward_backward", kcs_forward_backward_autograd);
  m.impl("bone_decompose", bone_decompose_autograd);
  m.impl("bone_decompose_backward", bone_decompose_backward_autograd);
  m.impl("kcs_inverse", kcs_inverse_autograd);
  m.impl("kcs_inverse_backward", kcs_inverse_backward_autograd);
  m.impl("part_kcs_gram", part_kcs_gram_autograd);
  m.impl("part_kcs_gram_backward", part_kcs_gram_backward_autograd);
  m.impl("masked_cross_entropy", masked_cross_entropy_autograd);
  m.impl("distribution_align", distribution_align_autograd);
  m.impl("softmax_batch_mean", softmax_batch_mean_autograd);
  m.impl("masked_cross_entropy_backward", masked_cross_entropy_backward_autograd);
  m.impl("bn_act_dropout", bn_act_dropout_autograd);
  m.impl("bn_act_dropout_backward", bn_act_dropout_backward_autograd);
}

}  // namespace fastsmall
