"""Bad skeletons (issue #11): every junk parent list, part map and name list raises one clear
TypeError / ValueError naming the argument, whatever was cached before; large trees build in
O(J) memory, and the ops run on them. Table-driven: (call, expected exception, message regex)."""
import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastsmall as fs
from conftest import ROOT, available_backends, device_for, random_parents
from fastsmall import _extension as ext
from fastsmall.skeleton import as_skeleton, device_table, tree_of

BACKENDS = available_backends()
needs_cpp = pytest.mark.skipif(ext.C is None, reason=f"C++ extension unavailable: {ext.CPP_ERROR}")
NOT_INT = r"parents must be a sequence of ints, but parents\[{}\] is .* must be an int"

# ---- Skeleton(...): parents, parts, names ---------------------------------------------------------------

SKELETON_ERRORS = [
    # parents: not a sequence
    (lambda: fs.Skeleton(None), TypeError, r"parents must be a sequence of ints .* got NoneType"),
    (lambda: fs.Skeleton(5), TypeError, r"parents must be a sequence of ints .* got int"),
    (lambda: fs.Skeleton("-1,0"), TypeError, r"parents must be a sequence of ints .* got str"),
    (lambda: fs.Skeleton(b"\xff\x00"), TypeError, r"parents must be a sequence of ints .* got bytes"),
    (lambda: fs.Skeleton({0: -1, 1: 0}), TypeError, r"parents must be a sequence of ints .* got dict"),
    (lambda: fs.Skeleton(p for p in [-1, 0]), TypeError, r"parents must be a sequence of ints .* got generator"),
    (lambda: fs.Skeleton(np.array([[-1, 0]])), TypeError, r"parents must be 1-D, got an array of shape \(1, 2\)"),
    (lambda: fs.Skeleton(torch.tensor([-1.0, 0.0])), TypeError, "parents must be a 1-D integer tensor, got a 1-D torch.float32"),
    (lambda: fs.Skeleton(torch.tensor([[-1, 0]])), TypeError, "parents must be a 1-D integer tensor, got a 2-D"),
    (lambda: fs.Skeleton(torch.tensor(-1)), TypeError, "parents must be a 1-D integer tensor, got a 0-D"),
    (lambda: fs.Skeleton(torch.tensor([True, False])), TypeError, "parents must be a 1-D integer tensor, .*torch.bool"),
    # parents: entries that are not ints
    (lambda: fs.Skeleton([-1, 0.5]), ValueError, NOT_INT.format(1)),
    (lambda: fs.Skeleton([-1, 0, 1.0]), ValueError, NOT_INT.format(2) + "|1.0 \\(float\\)"),
    (lambda: fs.Skeleton([-1, True]), ValueError, NOT_INT.format(1)),
    (lambda: fs.Skeleton([np.bool_(False), -1]), ValueError, NOT_INT.format(0)),
    (lambda: fs.Skeleton(np.array([-1.0, 0.0])), ValueError, NOT_INT.format(0)),
    (lambda: fs.Skeleton([-1, "0"]), ValueError, NOT_INT.format(1)),
    (lambda: fs.Skeleton([-1, None]), ValueError, NOT_INT.format(1)),
    (lambda: fs.Skeleton([[-1, 0, 1]]), ValueError, NOT_INT.format(0)),
    (lambda: fs.Skeleton([-1, [0]]), ValueError, NOT_INT.format(1)),
    (lambda: fs.Skeleton([-1, 0j]), ValueError, NOT_INT.format(1)),
    # parents: ints that are not a tree
    (lambda: fs.Skeleton([]), ValueError, "at least one joint"),
    (lambda: fs.Skeleton(np.array([], dtype=np.int64)), ValueError, "at least one joint"),
    (lambda: fs.Skeleton([-1, -5]), ValueError, r"parents\[1\] = -5 is out of range"),
    (lambda: fs.Skeleton([-1, 2 ** 70]), ValueError, r"parents\[1\] = 1180591620717411303424 is out of range"),
    (lambda: fs.Skeleton([-1, 0, 3]), ValueError, r"parents\[2\] = 3 is out of range: expected -1 \(root\) or a joint index in \[0, 3\)"),
    (lambda: fs.Skeleton([-1, -1, 0]), ValueError, r"exactly one root \(-1\), found 2: joints \[0, 1\]"),
    (lambda: fs.Skeleton([1, 2, 0]), ValueError, "exactly one root"),
    (lambda: fs.Skeleton([-1] * 50), ValueError, r"found 50: joints \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\]"),
    (lambda: fs.Skeleton([-1, 1]), ValueError, "its own parent"),
    (lambda: fs.Skeleton([-1, 2, 3, 1]), ValueError, r"cycle: joints \[1, 2, 3\] are not reachable from the root 0"),
    # parts
    (lambda: fs.Skeleton([-1, 0, 1], parts=[[0, 1]]), TypeError, "parts must be a mapping .* got list"),
    (lambda: fs.Skeleton([-1, 0, 1], parts="arm"), TypeError, "parts must be a mapping .* got str"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"a": None}), TypeError, "part 'a' must be a sequence of bone indices .* got NoneType"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"a": 0}), TypeError, "part 'a' must be a sequence of bone indices .* got int"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"a": "01"}), TypeError, "part 'a' must be a sequence of bone indices .* got str"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"a": {0: 1}}), TypeError, "part 'a' must be a sequence of bone indices .* got dict"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"a": torch.tensor([0.0])}), TypeError, "part 'a' must be a 1-D integer tensor"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"a": [0, 1.0]}), ValueError, r"part 'a' must list bone indices \(ints\), but an entry is 1.0"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"a": [True]}), ValueError, "part 'a' must list bone indices .* True"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"a": [[0, 1]]}), ValueError, r"part 'a' must list bone indices .* \[0, 1\]"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"a": [None]}), ValueError, "part 'a' must list bone indices .* None"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"arm": [0, 7]}), ValueError, r"part 'arm' refers to bone 7, but the skeleton has 2 bones \(indices 0..1\)"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"arm": [-1]}), ValueError, "part 'arm' refers to bone -1"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"arm": [2 ** 70]}), ValueError, "part 'arm' refers to bone 1180591620717411303424"),
    (lambda: fs.Skeleton([-1], parts={"arm": [0]}), ValueError, r"part 'arm' refers to bone 0, but the skeleton has 0 bones"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"arm": [0, 0]}), ValueError, r"part 'arm' lists a bone more than once: \[0, 0\]"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"arm": []}), ValueError, "part 'arm' is empty"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={"arm": ()}), ValueError, "part 'arm' is empty"),
    (lambda: fs.Skeleton([-1, 0, 1], parts={1: [0], "1": [1]}), ValueError, "part names must be unique as strings"),
    # names
    (lambda: fs.Skeleton([-1, 0, 1], names=5), TypeError, "names must be a sequence of joint names .* got int"),
    (lambda: fs.Skeleton([-1, 0, 1], names="abc"), TypeError, "names must be a sequence of joint names .* got str"),
    (lambda: fs.Skeleton([-1, 0, 1], names={"a": 0, "b": 1, "c": 2}), TypeError, "names must be a sequence .* got dict"),
    (lambda: fs.Skeleton([-1, 0, 1], names=["a", "b"]), ValueError, "names has 2 entries but parents has 3 joints"),
    (lambda: fs.Skeleton([-1, 0, 1], names=["a", "b", "a"]), ValueError, "names must be unique, but 'a' names more than one joint"),
    (lambda: fs.Skeleton([-1, 0], names=[1, "1"]), ValueError, "names must be unique, but '1'"),
    # the functions behind the ops
    (lambda: as_skeleton("h36m"), TypeError, "skeleton must be a fastsmall.Skeleton or a list of parent indices, got str"),
    (lambda: as_skeleton(np.array([-1, 0])), TypeError, "skeleton must be a fastsmall.Skeleton .* got ndarray"),
    (lambda: as_skeleton(None), TypeError, "skeleton must be a fastsmall.Skeleton .* got NoneType"),
    (lambda: as_skeleton([[-1, 0, 1]]), ValueError, NOT_INT.format(0)),
    (lambda: as_skeleton([{-1}, 0]), ValueError, NOT_INT.format(0)),
    (lambda: tree_of([-1, [0]]), ValueError, NOT_INT.format(1)),
    (lambda: tree_of(None), TypeError, "parents must be a sequence of ints"),
    (lambda: device_table((-1, 0.0), "bone_parent", torch.device("cpu"), torch.int64), ValueError, NOT_INT.format(1)),
    (lambda: device_table((-1, 0), "no_such_table", torch.device("cpu"), torch.int64), KeyError, "no_such_table"),
]


@pytest.mark.parametrize("call, error, message", SKELETON_ERRORS, ids=[f"case{i}" for i in range(len(SKELETON_ERRORS))])
def test_skeleton_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_errors_are_one_line_and_short_for_huge_lists():
    J = 100_000
    cases = [([-1] * J, "exactly one root"), ([-1] + [0.0] * (J - 1), "parents"),
             ([-1] + [j + 2 for j in range(J - 2)] + [1], "cycle"), ([-1, 0], "names")]
    for parents, what in cases:
        kw = {"names": ["x"] * 2} if what == "names" else {}
        with pytest.raises(ValueError, match=what) as info:
            fs.Skeleton(parents, **kw)
        message = str(info.value)
        assert "\n" not in message and len(message) < 300, message


# ---- validation does not depend on what was cached ---------------------------------------------------

ACCEPTED = [-1, 0, 1, 1]
SAME_VALUES = [  # equal to ACCEPTED as tuples (hash and ==), so a value-keyed cache would answer
    [-1.0, 0, 1, 1], [-1, 0.0, 1.0, 1.0], [-1, False, True, True], (-1, 0, 1.0, True),
    [-1, np.float64(0.0), 1, 1], [-1, np.bool_(False), 1, 1],
]


@pytest.mark.parametrize("values", SAME_VALUES, ids=[f"values{i}" for i in range(len(SAME_VALUES))])
def test_validation_does_not_depend_on_the_cache(values):
    x = torch.randn(2, 4, 3)
    want = fs.ops.kcs_forward(x, ACCEPTED)  # fills every cache with the int tree
    assert torch.equal(fs.ops.kcs_forward(x, list(ACCEPTED)), want)
    fs.Skeleton(ACCEPTED), tree_of(tuple(ACCEPTED)), as_skeleton(ACCEPTED)
    device_table(tuple(ACCEPTED), "bone_parent", torch.device("cpu"), torch.int64)
    for call in (lambda: fs.Skeleton(values), lambda: as_skeleton(values), lambda: tree_of(values),
                 lambda: tree_of(tuple(values)),
                 lambda: device_table(tuple(values), "bone_parent", torch.device("cpu"), torch.int64),
                 lambda: fs.reference.kcs_forward(x, values)):
        with pytest.raises(ValueError, match=r"parents must be a sequence of ints, but parents\[\d\]"):
            call()


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("values", SAME_VALUES, ids=[f"values{i}" for i in range(len(SAME_VALUES))])
def test_ops_reject_float_and_bool_parents_after_an_int_call(backend, device, values):
    x = torch.randn(2, 4, 3, device=device_for(backend))
    fs.ops.kcs_forward(x, ACCEPTED, backend=backend)
    fs.ops.bone_decompose(x, ACCEPTED, backend=backend)
    fs.ops.kcs_inverse(x[..., 1:, :], ACCEPTED, backend=backend)
    for call in (lambda: fs.ops.kcs_forward(x, values, backend=backend),
                 lambda: fs.ops.bone_decompose(x, values, backend=backend),
                 lambda: fs.ops.kcs_inverse(x[..., 1:, :], values, backend=backend),
                 lambda: fs.ops.part_kcs_gram(x[..., 1:, :], values, backend=backend)):
        with pytest.raises(ValueError, match=r"parents must be a sequence of ints, but parents\[\d\]"):
            call()


def test_numpy_and_tensor_parents_are_ints():
    want = fs.Skeleton([2, 0, -1, 1])
    for parents in (np.array([2, 0, -1, 1]), np.array([2, 0, -1, 1], dtype=np.int32), torch.tensor([2, 0, -1, 1]),
                    [np.int64(2), 0, -1, np.int16(1)], range(-1, 2)):
        sk = fs.Skeleton(parents)
        assert all(type(p) is int for p in sk.parents)
        if not isinstance(parents, range):
            assert sk == want
    assert fs.Skeleton([-1, 0, 1], parts={"a": np.array([1, 0])}).parts == {"a": (1, 0)}
    assert fs.Skeleton([-1, 0, 1], parts={"a": torch.tensor([1])}).parts == {"a": (1,)}
    assert all(type(b) is int for b in fs.Skeleton([-1, 0, 1], parts={"a": [np.int64(1)]}).parts["a"])


# ---- complexity: O(J) trees, tables built on first use ---------------------------------------------------

_BIG_TREE = textwrap.dedent("""
    import json, random, resource, sys
    import fastsmall as fs
    J, kind = int(sys.argv[1]), sys.argv[2]
    if kind == "chain":
        parents = [-1] + list(range(J - 1))
    else:
        rng = random.Random(0)
        parents = [-1] + [rng.randrange(j) for j in range(1, J)]
        labels = list(range(J)); rng.shuffle(labels)  # not in topological order
        shuffled = [0] * J
        for j, p in enumerate(parents):
            shuffled[labels[j]] = -1 if p == -1 else labels[p]
        parents = shuffled
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sk = fs.Skeleton(parents)
    t = sk.tree
    facts = dict(J=sk.num_joints, NB=sk.num_bones, root=sk.root, topo=len(t.topo_bones),
                 children=sum(map(len, t.child_bones)), max_depth=max(t.depth),
                 lazy=[n for n in ("path_bones", "subtree_joints") if n in vars(t)])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(facts, before_kib=before, after_kib=after)))
""")


@pytest.mark.parametrize("kind", ["chain", "random"])
def test_a_million_joint_tree_builds_in_linear_memory(kind):
    """2^20 joints: built in O(J) (was O(J^2): out of memory for a chain). Memory is measured in a
    fresh process (max RSS); time is not asserted (a loaded machine), see the report."""
    J = 2 ** 20
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _BIG_TREE, str(J), kind], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["J"], out["NB"], out["topo"], out["children"]) == (J, J - 1, J - 1, J - 1)
    assert out["lazy"] == []  # the O(J^2) tables are not built by the constructor
    if kind == "chain":
        assert out["root"] == 0 and out["max_depth"] == J - 1
    assert out["after_kib"] < 1.5 * 2 ** 20, out  # < 1.5 GiB in all (imports included)
    assert out["after_kib"] - out["before_kib"] < 1.0 * 2 ** 20, out  # the tree itself: well under 1 GiB


def test_quadratic_tables_are_lazy_and_unchanged(rng):
    """path_bones, subtree_joints and path_matrix are built on first use, with the old definitions' values."""
    for J in (1, 2, 3, 7, 16, 30):
        parents = random_parents(J, rng)
        t = fs.skeleton._derive_tree(tuple(parents))
        assert "path_bones" not in vars(t) and "subtree_joints" not in vars(t)
        # the definitions, written out the slow way
        def path(j):
            out = []
            while parents[j] != -1:
                out.append(t.joint_bone[j])
                j = parents[j]
            return tuple(reversed(out))
        below = {j: {c for c in range(J) if j in _ancestors_or_self(parents, c)} for j in range(J)}
        assert t.path_bones == tuple(path(j) for j in range(J))
        assert t.subtree_joints == tuple(tuple(sorted(below[j])) for j in t.bone_child)
        assert t.depth == tuple(len(path(j)) for j in range(J))
        for dtype in (torch.float32, torch.float64, torch.int32):
            m = device_table(tuple(parents), "path_matrix", torch.device("cpu"), dtype)
            want = torch.tensor([[1 if k in path(j) else 0 for k in range(J - 1)] for j in range(J)], dtype=dtype)
            assert m.dtype == dtype and m.shape == (J, J - 1) and torch.equal(m, want.reshape(J, J - 1))


def _ancestors_or_self(parents, j):
    out = {j}
    while parents[j] != -1:
        j = parents[j]
        out.add(j)
    return out


def test_ten_thousand_joint_chain_is_fast_to_build():
    """The issue's case (10 s and 1.4 GB before): the constructor builds no J x depth table."""
    sk = fs.Skeleton([-1] + list(range(9_999)))
    assert "path_bones" not in vars(sk.tree) and sk.tree.depth[-1] == 9_999


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_kcs_forward_on_a_long_chain_matches_the_reference(backend, device):
    J = 10_000
    parents = [-1] + list(range(J - 1))
    rng = random.Random(1)
    shuffled = parents[:]  # the same chain with another joint order
    labels = list(range(J))
    rng.shuffle(labels)
    for j, p in enumerate(parents):
        shuffled[labels[j]] = -1 if p == -1 else labels[p]
    for ps in (parents, shuffled):
        sk = fs.Skeleton(ps)
        x = torch.randn(2, J, 3, dtype=torch.float64)
        got = fs.ops.kcs_forward(x.to(device_for(backend)), sk, backend=backend).cpu()
        assert torch.equal(got, fs.reference.kcs_forward(x, sk))
        unit, length = fs.ops.bone_decompose(x.to(device_for(backend)), sk, backend=backend)
        ref_unit, ref_length = fs.reference.bone_decompose(x, sk)
        torch.testing.assert_close(unit.cpu(), ref_unit, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(length.cpu(), ref_length, atol=1e-12, rtol=1e-12)


@needs_cpp
def test_cpp_kernels_on_a_million_joint_chain():
    """csrc/tree.h builds its tables in O(J) too: the C++ kernels run on 2^20 joints."""
    J = 2 ** 20
    parents = [-1] + list(range(J - 1))
    x = torch.randn(1, J, 3)
    bones = fs.ops.kcs_forward(x, parents, backend="cpp")
    assert torch.equal(bones, fs.ops.kcs_forward(x, parents, backend="reference"))
    # kcs_inverse walks the chain: x[j] = x[root] - sum of the bones above j (float64: exact enough)
    xd = x.double()
    back = fs.ops.kcs_inverse(fs.ops.kcs_forward(xd, parents, backend="cpp"), parents, xd[:, :1], backend="cpp")
    torch.testing.assert_close(back, xd, atol=1e-8, rtol=0)
