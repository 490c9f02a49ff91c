"""PoseAug's 3D pose estimators: shapes, gradients, eval behaviour, errors, sizes, fitting."""
from __future__ import annotations

import pytest
import torch

from fastsmall.methods.poseaug.estimators import (ESTIMATORS, STGCN, SemGCN, SimpleBaseline, VideoPose3D,
                                                  build_estimator, skeleton_adjacency, spatial_partitions,
                                                  stgcn_graph)
from fastsmall.skeleton import Skeleton

H16 = Skeleton.h36m16()
H17 = Skeleton.h36m17()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def models16():
    torch.manual_seed(0)
    return {name: build_estimator(name) for name in ESTIMATORS}


def test_output_shape_and_root(models16):
    x = torch.randn(5, 16, 2)
    for name, model in models16.items():
        model.train()
        y = model(x)
        assert y.shape == (5, 16, 3), name
        assert y.dtype == x.dtype and torch.isfinite(y).all(), name
    # SimpleBaseline / VideoPose3D regress the non-root joints and place the root at the origin
    for name in ("simple_baseline", "videopose"):
        assert (models16[name](x)[:, 0] == 0).all(), name


def test_gradients_reach_every_parameter(models16):
    torch.manual_seed(1)
    x, target = torch.randn(8, 16, 2), torch.randn(8, 16, 3)
    for name, model in models16.items():
        model.train()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), target).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}.{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}.{pname}"
            if name == "stgcn" and pname.startswith("non_local.") and not pname.startswith("non_local.W_bn."):
                # behind the non-local block's zero-initialised output BN (identity at start, as
                # released): exactly zero here, connected once the BN scale moves (next test)
                assert (p.grad == 0).all(), f"{name}.{pname}"
                continue
            assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"


@pytest.mark.parametrize("make", [lambda: SemGCN(non_local=True),
                                  lambda: STGCN(channels=(16, 16, 32), pool_channels=32, edge_importance=True)],
                         ids=["semgcn", "stgcn"])
def test_gradients_reach_non_local_blocks(make):
    torch.manual_seed(2)
    model = make()
    # the block's output BN starts at zero (identity block), which blocks gradients to the
    # layers before it; give it a non-zero scale to check every parameter is connected
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "W_bn"):
                m.W_bn.weight.fill_(0.5)
    torch.nn.functional.mse_loss(model(torch.randn(6, 16, 2)), torch.randn(6, 16, 3)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_eval_is_deterministic_and_batch_size_one_works(models16):
    x = torch.randn(7, 16, 2)
    for name, model in models16.items():
        model.eval()
        with torch.no_grad():
            y1, y2 = model(x), model(x)
            single = model(x[3:4])
        assert torch.equal(y1, y2), name
        assert single.shape == (1, 16, 3), name
        torch.testing.assert_close(single[0], y1[3], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("bad_shape", [(4, 32), (4, 17, 2), (4, 16, 3), (16, 2), (1, 4, 16, 2)])
def test_wrong_input_shape_is_a_clear_error(models16, bad_shape):
    for name, model in models16.items():
        with pytest.raises(ValueError, match=r"x2d must have shape \[B, 16, 2\]"):
            model(torch.randn(*bad_shape))


def test_non_float_input_is_rejected(models16):
    with pytest.raises(TypeError, match="x2d"):
        models16["semgcn"](torch.zeros(2, 16, 2, dtype=torch.long))


def test_other_skeleton():
    torch.manual_seed(3)
    x = torch.randn(3, 17, 2)
    for name in ESTIMATORS:
        model = build_estimator(name, H17)
        assert model(x).shape == (3, 17, 3), name
        with pytest.raises(ValueError, match=r"\[B, 17, 2\]"):
            model(torch.randn(3, 16, 2))
    # a root that is not joint 0: the zero root lands at the skeleton's root index
    sk = Skeleton(parents=[1, -1, 1, 2], names=["a", "root", "c", "d"])
    y = SimpleBaseline(sk, linear_size=32).eval()(torch.randn(2, 4, 2))
    assert (y[:, 1] == 0).all() and (y[:, [0, 2, 3]] != 0).any()
    # no mirror limbs: ST-GCN pools every joint into one group (documented fallback)
    model = STGCN(sk, channels=(8, 8, 16), pool_channels=16)
    assert model.groups == ((0, 1, 2, 3),)
    assert model(torch.randn(3, 4, 2)).shape == (3, 4, 3)


def test_semgcn_graph_is_the_skeleton_with_self_loops():
    adj = skeleton_adjacency(H16)
    assert adj.shape == (16, 16) and torch.equal(adj, adj.T) and adj.diagonal().all()
    assert int(adj.sum()) == 16 + 2 * 15  # self-loops + both directions of every bone
    conv = SemGCN().gconv_output
    A = conv.edge_weights()
    torch.testing.assert_close(A.sum(1), torch.ones(16))
    assert (A[~adj] == 0).all()
    # e starts at 1: uniform weights over each joint's neighbourhood (as released)
    torch.testing.assert_close(A[adj.nonzero(as_tuple=True)],
                               (1.0 / adj.sum(1).float())[adj.nonzero(as_tuple=True)[0]])


def test_build_estimator_names_and_errors():
    assert ESTIMATORS == ("simple_baseline", "videopose", "semgcn", "stgcn")
    assert isinstance(build_estimator("mlp", linear_size=16), SimpleBaseline)
    assert isinstance(build_estimator("simple_baseline", linear_size=16), SimpleBaseline)
    assert isinstance(build_estimator("videopose", channels=16), VideoPose3D)
    assert isinstance(build_estimator("gcn", hid_dim=8), SemGCN)
    assert isinstance(build_estimator("SemGCN", hid_dim=8), SemGCN)
    m = build_estimator("semgcn", H17, hid_dim=8, num_blocks=1)
    assert m.num_joints == 17 and len(m.gconv_layers) == 1
    assert isinstance(build_estimator("stgcn", channels=(8,), pool_channels=8), STGCN)
    m = build_estimator("ST_GCN", H17, channels=(8, 16), pool_channels=8)
    assert isinstance(m, STGCN) and m.num_joints == 17 and len(m.blocks) == 2
    with pytest.raises(ValueError, match=r"unknown estimator 'resnet'.*valid names.*semgcn.*stgcn"):
        build_estimator("resnet")
    with pytest.raises(ValueError, match="channels"):
        build_estimator("stgcn", channels=())
    with pytest.raises(TypeError):
        build_estimator("mlp", no_such_option=1)


def test_parameter_counts_match_the_released_models():
    """Sizes of the released architectures, counted by hand (J joints, J2 = 2J inputs, O = 3(J-1)):

    SimpleBaseline (LinearModel, linear 1024, 2 stages):
        w1 J2*1024+1024 + BN 2*1024 + 2 stages * 2*(1024^2+1024 + 2*1024) + w2 1024*O+O
        J=16: 33,792 + 2,048 + 4,206,592 + 46,125 = 4,288,557 (PoseAug prints 4.29M)
    VideoPose3D (TemporalModelOptimized1f, widths [1]*5, channels 1024):
        expand J2*1024 (no bias) + BN 2048 + 4 blocks * 2*(1024^2 + 2048) + shrink 1024*O+O
        J=16: 32,768 + 2,048 + 8,404,992 + 46,125 = 8,485,933 (8.49M)
    SemGCN (hid 128, 4 blocks; E = J + 2(J-1) edges incl. self-loops):
        input 2*2*128+E+128 + BN 256 + 8 * (2*128*128+E+128 + BN 256) + output 2*128*3+E+3
        J=16 (E=46): 942 + 265,584 + 817 = 267,343 (the SemGCN paper's 0.27M);
        with the non-local block (5 x 33,472): 434,703 (the paper's 0.43M)
    STGCN (st_gcn_single_frame_test.Model, K=4 partitions; block(i, o) = graph conv i*4o+4o
    + BN 2o + 1x1 conv o*o+o + BN 2o, + residual i*o+o + BN 2o when i != o and not the first):
        data_bn 2*2J + blocks (2,128) 18,560 + (128,128) 83,072 + (128,256) 232,448
        + part blocks (256,512) 923,648 + (512,512) 1,315,328 + global conv+BN 263,680
        + part conv+BN 262,912 + non-local 512 (3 x 131,328 + 131,584 + BN 1,024) 526,592
        + output conv 1,539 = 3,627,779 + 4J. The released model always runs on its 17-joint
        graph: 3,627,847 (PoseAug prints 3.63M); on h36m16's own graph here: 3,627,843.
    """
    def stgcn_block(i, o, residual=True):
        res = i * o + o + 2 * o if residual and i != o else 0
        return i * 4 * o + 4 * o + 2 * o + o * o + o + 2 * o + res

    def expected(J):
        J2, O, E = 2 * J, 3 * (J - 1), 3 * J - 2
        mlp = (J2 * 1024 + 1024) + 2 * 1024 + 2 * 2 * (1024 * 1024 + 1024 + 2 * 1024) + (1024 * O + O)
        vp = J2 * 1024 + 2048 + 4 * 2 * (1024 * 1024 + 2048) + (1024 * O + O)
        gcn = (2 * 2 * 128 + E + 128 + 256) + 8 * (2 * 128 * 128 + E + 128 + 256) + (2 * 128 * 3 + E + 3)
        stgcn = (2 * J2 + stgcn_block(2, 128, residual=False) + stgcn_block(128, 128) + stgcn_block(128, 256)
                 + stgcn_block(256, 512) + stgcn_block(512, 512) + (512 * 512 + 512 + 1024)
                 + (1024 * 256 + 256 + 512) + (3 * (512 * 256 + 256) + 256 * 512 + 512 + 1024) + (512 * 3 + 3))
        return {"simple_baseline": mlp, "videopose": vp, "semgcn": gcn, "stgcn": stgcn}

    assert expected(16) == {"simple_baseline": 4_288_557, "videopose": 8_485_933, "semgcn": 267_343,
                            "stgcn": 3_627_843}
    assert expected(17)["stgcn"] == 3_627_847  # the released WrapSTGCN (17-joint graph inside)
    # edge-importance masks (off as released): one [4, V, V] per block, 3 on 16 joints, 2 on 5 parts
    assert n_params(STGCN(edge_importance=True)) == 3_627_843 + 3 * 4 * 16 * 16 + 2 * 4 * 5 * 5
    for sk in (H16, H17):
        for name, count in expected(sk.num_joints).items():
            assert n_params(build_estimator(name, sk)) == count, (name, sk.num_joints)
    assert n_params(SemGCN(non_local=True)) == 434_703
    groups = [[2, 3], [5, 6], [1, 4], [0, 7], [8, 9], [14, 15], [11, 12], [10, 13]]  # SemGCN's H36M grouping
    model = SemGCN(non_local=True, nodes_group=groups)
    assert n_params(model) == 434_703 and model(torch.randn(2, 16, 2)).shape == (2, 16, 3)


def test_non_local_starts_as_identity_and_checks_groups():
    torch.manual_seed(4)
    from fastsmall.methods.poseaug.estimators import GraphNonLocal
    block = GraphNonLocal(8, 16, [[2, 3], [5, 6], [1, 4], [0, 7], [8, 9], [14, 15], [11, 12], [10, 13]])
    x = torch.randn(3, 16, 8)
    torch.testing.assert_close(block(x), x)
    with pytest.raises(ValueError, match="nodes_group"):
        GraphNonLocal(8, 16, [[0, 1, 2]] + [[j] for j in range(3, 16)])


@pytest.mark.parametrize("name, small", [("simple_baseline", dict(linear_size=128)),
                                         ("videopose", dict(channels=128)),
                                         ("semgcn", dict(hid_dim=32)),
                                         ("stgcn", dict(channels=(32, 32, 64), pool_channels=64))])
def test_fits_a_tiny_regression(name, small):
    # widths reduced to keep the test fast: this checks learnability, not capacity
    torch.manual_seed(5)
    model = build_estimator(name, dropout=0.0, **small)
    x = torch.randn(64, 16, 2)
    target = torch.randn(64, 16, 3) * 0.2
    target[:, 0] = 0  # root-relative targets, as in training
    opt = torch.optim.Adam(model.parameters(), lr=1e-3 if name != "semgcn" else 1e-2)
    model.train()
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])


def test_stgcn_graph_is_the_released_layout_on_h36m():
    # released hm36_gt (17 joints): parts la, ra, ll, rl, cb and sym_base, centre Spine (7)
    center, groups, sym = stgcn_graph(H17)
    assert center == 7
    assert groups == ((11, 12, 13), (14, 15, 16), (4, 5, 6), (1, 2, 3), (0, 7, 8, 9, 10))
    assert set(map(frozenset, sym)) == set(map(frozenset, [(6, 3), (5, 2), (4, 1), (11, 14), (12, 15), (13, 16)]))
    # h36m16: the same groups and links without Neck/Nose
    center, groups, sym = stgcn_graph(H16)
    assert center == 7
    assert groups == ((10, 11, 12), (13, 14, 15), (4, 5, 6), (1, 2, 3), (0, 7, 8, 9))
    assert set(map(frozenset, sym)) == set(map(frozenset, [(6, 3), (5, 2), (4, 1), (10, 13), (11, 14), (12, 15)]))
    # a generic tree: only the two equal-length sibling chains pair up, lower index first without L/R names
    center, groups, sym = stgcn_graph(Skeleton(parents=[-1, 0, 1, 0, 3, 0]))
    assert groups == ((1, 2), (3, 4), (0, 5)) and sym == ((1, 3), (2, 4))


def test_stgcn_partitions_match_the_released_spatial_strategy():
    """Released entries on hm36_gt, worked by hand: A[k, v, w] = 1/deg(w) for neighbour v of w,
    k = self / v farther from the Spine / v nearer / v the mirror partner."""
    A = STGCN(H17, channels=(8,), pool_channels=8).blocks[0].A
    assert A.shape == (4, 17, 17)
    torch.testing.assert_close(A.sum((0, 1)), torch.ones(17))  # every node averages its neighbourhood
    third, fifth, quarter = 1 / 3, 1 / 5, 1 / 4
    # Spine (7): itself, Hip (0) and Thorax (8), both farther from the centre
    assert A[0, 7, 7] == pytest.approx(third) and A[1, 0, 7] == pytest.approx(third)
    assert A[1, 8, 7] == pytest.approx(third) and A[2, :, 7].sum() == 0
    # Thorax (8): Spine nearer; Neck, both shoulders farther
    assert A[2, 7, 8] == pytest.approx(fifth)
    assert [A[1, v, 8].item() for v in (9, 11, 14)] == pytest.approx([fifth] * 3)
    # LShoulder (11): Thorax nearer, LElbow farther, RShoulder its mirror partner
    assert A[2, 8, 11] == pytest.approx(quarter) and A[1, 12, 11] == pytest.approx(quarter)
    assert A[3, 14, 11] == pytest.approx(quarter)
    # 6 mirror pairs, both directions: shoulders, elbows, hips, knees have 4 neighbours incl. self,
    # wrists and feet 3
    assert A[3].sum().item() == pytest.approx(8 * quarter + 4 * third)
    # the part graph: limbs 0..3 around the centre group 4, arms and legs mirrored
    Ap = spatial_partitions(5, [(0, 4), (1, 4), (2, 4), (3, 4)], [(0, 1), (2, 3)], [1, 1, 1, 1, 0])
    assert Ap[1, :4, 4].tolist() == pytest.approx([fifth] * 4)
    assert Ap[2, 4, :4].tolist() == pytest.approx([third] * 4)
    assert Ap[3, 0, 1] == pytest.approx(third) and Ap[3, 2, 3] == pytest.approx(third)


def test_stgcn_dropout_settings():
    def rates(model):
        return sorted({m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)})

    assert rates(STGCN(channels=(8,), pool_channels=8)) == [0.05, 0.1, 0.25]  # released --dropout -1
    assert rates(STGCN(channels=(8,), pool_channels=8, dropout=0.0)) == [0.0]  # PoseAug stage: --dropout 0
    data_bn = STGCN(channels=(8,), pool_channels=8).data_bn
    assert data_bn.eps == 0.1 and data_bn.momentum == 0.1  # released BatchNorm1d(2J, 0.1) sets eps


# ---- impl="fused": the BatchNorm -> ReLU -> Dropout (-> residual) tails as fs.ops.bn_act_dropout ----

FUSABLE = [("simple_baseline", dict(linear_size=48)), ("videopose", dict(channels=40, num_blocks=2))]


def _pair(name, small, dropout, momentum=None):
    torch.manual_seed(11)
    official = build_estimator(name, impl="official", dropout=dropout, **small).double()
    fused = build_estimator(name, impl="fused", dropout=dropout, **small).double()
    fused.load_state_dict(official.state_dict())
    if momentum is not None or name == "simple_baseline":
        for model in (official, fused):
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.momentum = momentum
    return official, fused


@pytest.mark.parametrize("name, small", FUSABLE)
def test_fused_layers_equal_official_modules_without_dropout(name, small):
    # same modules and state dict; in training: outputs, input and parameter gradients, BN buffers
    # (running statistics, num_batches_tracked; momentum None = cumulative average for SimpleBaseline)
    official, fused = _pair(name, small, dropout=0.0)
    assert list(official.state_dict()) == list(fused.state_dict())
    for step in range(3):
        x = torch.randn(9, 16, 2, dtype=torch.float64)
        outs = []
        for model in (official, fused):
            model.train()
            xi = x.clone().requires_grad_()
            y = model(xi)
            grads = torch.autograd.grad((y * torch.linspace(-1, 1, 48, dtype=torch.float64).view(1, 16, 3)).sum(),
                                        [xi, *model.parameters()])
            outs.append((y, grads))
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-10)
        for a, b in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for (k, a), (_, b) in zip(official.state_dict().items(), fused.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=k)
    official.eval(), fused.eval()
    x = torch.randn(5, 16, 2, dtype=torch.float64)
    torch.testing.assert_close(official(x), fused(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name, small", FUSABLE)
def test_fused_dropout_is_reproducible_inverted_dropout(name, small):
    official, fused = _pair(name, small, dropout=0.25)
    fused.train()
    x = torch.randn(64, 16, 2, dtype=torch.float64)
    torch.manual_seed(3)
    a = fused(x)
    torch.manual_seed(3)
    b = fused(x)
    torch.manual_seed(4)
    c = fused(x)
    assert torch.equal(a, b) and not torch.equal(a, c)  # masks follow torch's generator
    # in eval mode dropout is off and both implementations agree
    official.load_state_dict(fused.state_dict())  # the running statistics the training passes moved
    official.eval(), fused.eval()
    torch.testing.assert_close(official(x), fused(x), rtol=1e-10, atol=1e-10)


def test_build_estimator_checks_impl():
    with pytest.raises(ValueError, match="impl"):
        build_estimator("simple_baseline", impl="fast")
    assert build_estimator("semgcn", impl="official", hid_dim=8) is not None  # same model in both
