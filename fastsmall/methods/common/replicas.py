"""K replicas of one network trained as one: parameters, buffers and SGD momentum stacked on a
leading replica dimension, the forward ``torch.func.vmap``-ed over it.

Each replica keeps its own ``nn.Module`` -- the single-seed trainer's model -- whose parameters,
buffers and momentum buffers become *views* of row k of the stacked tensors (``p.data = stack[k]``:
the Parameter objects stay the same, so every reference a trainer holds -- optimizer, masks,
re-initialisation -- keeps working). What the single-seed code does to its model in place (KE's
re-initialisation, DSD's masks, evaluation, ``state_dict``) therefore acts on its replica's row, and
one stacked step trains all of them:

* forward: ``vmap(functional_call(base, (params_k, buffers_k), x_k))`` -- PyTorch's batching rules
  turn K convolutions into one grouped convolution and K BatchNorms into one (per replica
  statistics; the running statistics are batched buffers updated in place, one row per replica);
* backward: the sum of the K replicas' losses (each replica's gradient is its own loss's);
* SGD: elementwise, so one foreach update of the stacked tensors is K single-replica updates.

Why vmap and not hand-written grouped modules: it stacks any architecture (DigitsCNN, ResNet-18,
WRN, MLPs) with the same numbers as the module itself (float64: equal to 1e-15 after several
steps, tested), and measured at K = 8 the stacked DigitsCNN step ran as fast as a grouped one
(both are one grouped convolution per layer; bench/bench_seeds.py).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..models import set_channels_last_maps, set_fused_bn_act
from .speed import require_zero_dampening

__all__ = ["ReplicaStack"]


class ReplicaStack:
    """Stack ``models`` (same architecture) into shared storage; see the module docstring."""

    def __init__(self, models: list[nn.Module]):
        if not models:
            raise ValueError("ReplicaStack needs at least one model")
        names = [[n for n, _ in m.named_parameters()] + [n for n, _ in m.named_buffers()] for m in models]
        if any(n != names[0] for n in names[1:]):
            raise ValueError("ReplicaStack: the models must share one architecture (parameter/buffer names differ)")
        self.models = models
        self.params, self.buffers = stack_module_state(models)  # new tensors [K, ...] (copies)
        # (replica tensor, its row of the stack), built once: reattach runs after every step
        self.rows = [(t, self.params[name].detach()[k]) for k, m in enumerate(models)
                     for name, t in m.named_parameters()]
        self.rows += [(t, self.buffers[name][k]) for k, m in enumerate(models) for name, t in m.named_buffers()]
        for t, row in self.rows:  # each replica's tensors become views of its row
            t.data = row
        self.base = copy.deepcopy(models[0]).to("meta")  # the architecture, without storage
        # vmap: fastsmall's ops have no batching rule, and the batched maps keep the layout vmap gives them
        set_fused_bn_act(set_channels_last_maps(self.base, False), False)

    def reattach(self) -> int:
        """Re-bind every replica tensor that code replaced instead of updating in place (the official
        KE loop's ``w.data = torch.where(...)``): its values are copied into its row and it becomes
        a view again. Returns how many were re-bound. Call after any per-replica hook."""
        n = 0
        for t, row in self.rows:
            if t.data_ptr() != row.data_ptr() or t.shape != row.shape:
                with torch.no_grad():
                    row.copy_(t.detach())
                t.data = row
                n += 1
        return n

    @property
    def k(self) -> int:
        return len(self.models)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)
        for m in self.models:
            m.train(mode)

    def functional(self, fn):
        """``vmap`` of ``fn(module_call, *per_replica_args)`` over the replicas, where
        ``module_call(x)`` runs the network with that replica's parameters and buffers."""
        base = self.base

        def one(params, buffers, *args):
            return fn(lambda x: functional_call(base, (params, buffers), (x,)), *args)

        batched = vmap(one)
        return lambda *args: batched(self.params, self.buffers, *args)

    def sgd(self, optimizers: list[torch.optim.SGD]) -> torch.optim.SGD:
        """One SGD over the stacked parameters with the replicas' param groups and hyper-parameters
        (which must be equal: the same parameter names in the same groups), whose momentum buffers
        are stacked from the replicas' (zeros where a replica has none: with dampening 0 the same as
        SGD's first ``buf = grad``); each replica's optimizer then holds views of its rows, so its
        ``state_dict`` and in-place restarts stay its own."""
        replica_params = [dict(m.named_parameters()) for m in self.models]
        layouts = []  # per replica: [(names of the group, its hyper-parameters but lr)]
        for params, o in zip(replica_params, optimizers):
            name_of = {id(p): n for n, p in params.items()}
            if any(id(p) not in name_of for g in o.param_groups for p in g["params"]):
                raise ValueError("ReplicaStack.sgd: an optimizer holds a parameter that is not its replica's")
            layouts.append([(tuple(name_of[id(p)] for p in g["params"]),
                             {k: v for k, v in g.items() if k not in ("params", "lr")}) for g in o.param_groups])
        if any(layout != layouts[0] for layout in layouts[1:]):
            raise ValueError("ReplicaStack.sgd: the replicas' optimizers differ in their param groups or "
                             "hyper-parameters")
        groups = []
        for (names, hyper), group in zip(layouts[0], optimizers[0].param_groups):
            require_zero_dampening(hyper, "ReplicaStack.sgd")
            groups.append({"params": [self.params[n] for n in names], "lr": float(group["lr"]), **hyper})
        opt = torch.optim.SGD(groups)
        for names, hyper in layouts[0]:
            if hyper["momentum"] == 0:
                continue
            for name in names:
                rows = []
                for params, o in zip(replica_params, optimizers):
                    buf = o.state.get(params[name], {}).get("momentum_buffer")
                    rows.append(torch.zeros_like(params[name]) if buf is None else buf.detach())
                stacked = opt.state[self.params[name]]["momentum_buffer"] = torch.stack(rows)
                for k, (params, o) in enumerate(zip(replica_params, optimizers)):
                    o.state[params[name]]["momentum_buffer"] = stacked[k]
        return opt
