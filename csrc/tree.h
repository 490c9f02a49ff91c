// Kinematic tree derived from a parent list, shared by every CPU kernel.
//
// Conventions (match PoseAug's released code, see README "Conventions"):
//   * joints 0..J-1, exactly one root with parents[root] == -1;
//   * bone k ends at the k-th non-root joint in index order (for h36m16 bone i
//     ends at joint i+1), bone vector = x[parent] - x[child].
// The parent list need not be topologically ordered: `topo_bones` orders bones
// so that a bone's parent joint is placed before its child joint.
#pragma once

#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace fastsmall {

struct Tree {
  int64_t num_joints = 0;
  int64_t root = -1;
  std::vector<int64_t> bone_parent;  // [NB] parent joint of bone k
  std::vector<int64_t> bone_child;   // [NB] child joint of bone k
  std::vector<int64_t> joint_bone;   // [J]  bone ending at joint j, -1 for the root
  std::vector<int64_t> topo_bones;   // [NB] bones, parents before children
  // Bones leaving each joint as a CSR list: child_bone[child_offset[j] .. child_offset[j+1]).
  std::vector<int64_t> child_offset;  // [J+1]
  std::vector<int64_t> child_bone;    // [NB]

  int64_t num_bones() const { return num_joints - 1; }
};

// Validates `parents` (one root, indices in range, no cycles) and derives the
// bone tables. Errors name the argument and what was expected.
inline Tree make_tree(c10::IntArrayRef parents) {
  Tree t;
  const int64_t J = static_cast<int64_t>(parents.size());
  TORCH_CHECK(J >= 1, "fastsmall: parents must list at least one joint, got an empty list");
  t.num_joints = J;
  for (int64_t j = 0; j < J; ++j) {
    const int64_t p = parents[j];
    if (p == -1) {
      TORCH_CHECK(t.root == -1, "fastsmall: parents must have exactly one root (-1), found joints ",
                  t.root, " and ", j);
      t.root = j;
    } else {
      TORCH_CHECK(p >= 0 && p < J, "fastsmall: parents[", j, "] = ", p,
                  " is out of range; expected -1 (root) or a joint index in [0, ", J, ")");
      TORCH_CHECK(p != j, "fastsmall: parents[", j, "] = ", j, " makes joint ", j,
                  " its own parent");
    }
  }
  TORCH_CHECK(t.root != -1, "fastsmall: parents must have exactly one root (-1), found none");

  t.joint_bone.assign(J, -1);
  for (int64_t j = 0, k = 0; j < J; ++j) {
    if (j == t.root) continue;
    t.joint_bone[j] = k++;
    t.bone_parent.push_back(parents[j]);
    t.bone_child.push_back(j);
  }

  // Breadth-first order from the root through a CSR child list; every joint
  // must be reached, otherwise the parent list contains a cycle.
  std::vector<int64_t> first(J + 1, 0), child(J > 1 ? J - 1 : 0);
  for (int64_t j = 0; j < J; ++j)
    if (j != t.root) ++first[parents[j] + 1];
  for (int64_t j = 0; j < J; ++j) first[j + 1] += first[j];
  std::vector<int64_t> fill(first.begin(), first.end() - 1);
  for (int64_t j = 0; j < J; ++j)
    if (j != t.root) child[fill[parents[j]]++] = j;
  std::vector<int64_t> queue{t.root};
  queue.reserve(J);
  for (size_t head = 0; head < queue.size(); ++head) {
    const int64_t j = queue[head];
    for (int64_t i = first[j]; i < first[j + 1]; ++i) {
      queue.push_back(child[i]);
      t.topo_bones.push_back(t.joint_bone[child[i]]);
    }
  }
  t.child_offset = first;
  t.child_bone.resize(child.size());
  for (size_t i = 0; i < child.size(); ++i) t.child_bone[i] = t.joint_bone[child[i]];
  TORCH_CHECK(static_cast<int64_t>(queue.size()) == J,
              "fastsmall: parents contains a cycle: only ", queue.size(), " of ", J,
              " joints are reachable from the root ", t.root);
  return t;
}

}  // namespace fastsmall
