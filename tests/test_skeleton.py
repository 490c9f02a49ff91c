import pytest
import torch

import fastsmall as fs
from fastsmall.skeleton import device_table, tree_of


def test_h36m16_conventions():
    sk = fs.Skeleton.h36m16()
    assert sk.parents == (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 8, 10, 11, 8, 13, 14)
    assert sk.num_joints == 16 and sk.num_bones == 15 and sk.root == 0
    # bone i ends at joint i + 1
    assert sk.tree.bone_child == tuple(range(1, 16))
    assert sk.bone_names[8] == "Head" and sk.bone_names[0] == "RHip"
    assert list(sk.parts) == ["left_arm", "right_arm", "right_leg", "left_leg", "torso"]
    assert sk.parts["left_arm"] == (7, 9, 10, 11)
    assert sk.parts["right_arm"] == (7, 12, 13, 14)
    assert sk.parts["right_leg"] == (0, 1, 2, 3, 6)  # PoseAug's "left leg"
    assert sk.parts["left_leg"] == (0, 3, 4, 5, 6)  # PoseAug's "right leg"
    assert sk.parts["torso"] == (0, 3, 6, 7, 8, 9, 12)
    # the right-leg part holds the bones ending at RHip, RKnee, RFoot
    assert {sk.bone_names[b] for b in sk.parts["right_leg"][:3]} == {"RHip", "RKnee", "RFoot"}


def test_h36m17_matches_h36m16_without_neck():
    s17, s16 = fs.Skeleton.h36m17(), fs.Skeleton.h36m16()
    assert s17.num_joints == 17 and s17.names[9] == "Neck/Nose"
    keep = [j for j in range(17) if j != 9]
    # dropping joint 9 and reparenting Head to Thorax gives h36m16
    remap = {old: new for new, old in enumerate(keep)}
    parents16 = [remap.get(s17.parents[j], -1) if s17.parents[j] != 9 else remap[8] for j in keep]
    assert tuple(parents16) == s16.parents
    for part in s16.parts:
        names16 = [s16.bone_names[b] for b in s16.parts[part]]
        names17 = [s17.bone_names[b] for b in s17.parts[part] if s17.bone_names[b] != "Neck/Nose"]
        assert names16 == names17


def test_user_tree_not_topological():
    # joint 0's parent is 2, root is 2: parents listed in no particular order
    sk = fs.Skeleton(parents=[2, 0, -1, 1], parts={"all": [0, 1, 2]}, names=["a", "b", "r", "c"])
    t = sk.tree
    assert t.root == 2
    assert t.bone_child == (0, 1, 3) and t.bone_parent == (2, 0, 1)
    assert t.path_bones[3] == (0, 1, 2)  # r -> a -> b -> c
    assert t.subtree_joints[0] == (0, 1, 3)
    assert t.topo_bones == (0, 1, 2)
    assert t.child_bones[2] == (0,) and t.child_bones[3] == ()


@pytest.mark.parametrize("parents, message", [
    ([], "at least one joint"),
    ([-1, -1, 0], "exactly one root"),
    ([1, 2, 0], "exactly one root"),
    ([-1, 0, 5], r"parents\[2\] = 5 is out of range"),
    ([-1, 1, 0], "its own parent"),
    ([-1, 2, 3, 1], "cycle"),
    ([-1, 0.5], "sequence of ints"),
    ([-1, True], "must be an int"),
])
def test_invalid_parents(parents, message):
    with pytest.raises(ValueError, match=message):
        fs.Skeleton(parents)


def test_invalid_parts_and_names():
    with pytest.raises(ValueError, match="part 'arm' refers to bone 7"):
        fs.Skeleton([-1, 0, 1], parts={"arm": [0, 7]})
    with pytest.raises(ValueError, match="more than once"):
        fs.Skeleton([-1, 0, 1], parts={"arm": [0, 0]})
    with pytest.raises(ValueError, match="names has 2 entries"):
        fs.Skeleton([-1, 0, 1], names=["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        fs.Skeleton([-1, 0, 1], names=["a", "a", "b"])


def test_device_tables_are_cached():
    parents = fs.Skeleton.h36m16().parents
    a = device_table(parents, "bone_parent", torch.device("cpu"), torch.int64)
    b = device_table(parents, "bone_parent", torch.device("cpu"), torch.int64)
    assert a is b
    path = device_table(parents, "path_matrix", torch.device("cpu"), torch.float64)
    assert path.shape == (16, 15)
    # LWrist (joint 12): Spine, Thorax, LShoulder, LElbow, LWrist bones = 6, 7, 9, 10, 11
    assert path[12].nonzero().flatten().tolist() == [6, 7, 9, 10, 11]
    assert tree_of(parents) is tree_of(tuple(parents))
