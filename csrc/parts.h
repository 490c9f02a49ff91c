// Body parts as lists of bone indices, and the Gram entries they produce.
#pragma once

#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace fastsmall {

// One entry of a part's Gram block with a <= b (the block is symmetric):
// G[pos1] = G[pos2] = <u_i, u_j>, pos1 == pos2 on the diagonal.
struct GramEntries {
  std::vector<int64_t> i, j, pos1, pos2;
  int64_t out_size = 0;  // per pose
};

// Validates the parts (sizes >= 1 summing to the list length, bones in range,
// no bone twice in a part) and lists the Gram entries in the requested layout.
inline GramEntries make_gram_entries(c10::IntArrayRef part_bones, c10::IntArrayRef part_sizes, int64_t NB,
                                     bool compact) {
  TORCH_CHECK(!part_sizes.empty(), "fastsmall: part_sizes must list at least one part");
  int64_t total = 0;
  for (size_t p = 0; p < part_sizes.size(); ++p) {
    TORCH_CHECK(part_sizes[p] >= 1, "fastsmall: part_sizes[", p, "] = ", part_sizes[p], " must be >= 1");
    total += part_sizes[p];
  }
  TORCH_CHECK(total == static_cast<int64_t>(part_bones.size()), "fastsmall: part_sizes sum to ", total,
              " but part_bones has ", part_bones.size(), " entries");
  GramEntries e;
  int64_t start = 0, offset = 0;
  for (size_t p = 0; p < part_sizes.size(); ++p) {
    const int64_t n = part_sizes[p];
    for (int64_t a = 0; a < n; ++a) {
      const int64_t bone = part_bones[start + a];
      TORCH_CHECK(bone >= 0 && bone < NB, "fastsmall: part ", p, " refers to bone ", bone,
                  " but bones has ", NB, " bones (shape[-2])");
      for (int64_t b = 0; b < a; ++b)
        TORCH_CHECK(part_bones[start + b] != bone, "fastsmall: part ", p, " lists bone ", bone, " twice");
    }
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t b = a; b < n; ++b) {
        const int64_t i = part_bones[start + a], j = part_bones[start + b];
        e.i.push_back(i);
        e.j.push_back(j);
        if (compact) {
          e.pos1.push_back(offset + a * n + b);
          e.pos2.push_back(offset + b * n + a);
        } else {
          e.pos1.push_back(static_cast<int64_t>(p) * NB * NB + i * NB + j);
          e.pos2.push_back(static_cast<int64_t>(p) * NB * NB + j * NB + i);
        }
      }
    }
    start += n;
    offset += n * n;
  }
  e.out_size = compact ? offset : static_cast<int64_t>(part_sizes.size()) * NB * NB;
  return e;
}

}  // namespace fastsmall
