"""Baseline: the plain per-task ``torch.autograd`` loop (``create_graph=True``) that the
peer libraries wrap — one task at a time, double-backward graphs, no vmap."""

from __future__ import annotations

import torch

from . import _common

NAME = "autograd loop"


def available() -> str | None:
    return None


def _loss_at(problem):
    names = list(problem.params)

    def loss_at(ws, batch):
        return problem.loss(dict(zip(names, ws)), batch)

    return loss_at


def maml(problem, spec, first_order: bool = False):
    loss_at = _loss_at(problem)
    theta = [p.detach().requires_grad_(True) for p in problem.params.values()]

    def one(i):
        train, val = problem.tasks.task(i)
        phi = theta
        for _ in range(spec.steps):
            g = torch.autograd.grad(loss_at(phi, train), phi, create_graph=not first_order)
            phi = [p - spec.inner_lr * gi for p, gi in zip(phi, g)]
        if first_order:
            phi = [p.detach().requires_grad_(True) for p in phi]
            return torch.autograd.grad(loss_at(phi, val), phi)
        return torch.autograd.grad(loss_at(phi, val), theta)

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


def imaml(problem, spec):
    loss_at = _loss_at(problem)
    theta = [p.detach() for p in problem.params.values()]

    def one(i):
        train, val = problem.tasks.task(i)
        phi = [p.clone().requires_grad_(True) for p in theta]
        for _ in range(spec.steps):
            g = torch.autograd.grad(loss_at(phi, train), phi)
            phi = [(p - spec.inner_lr * (gi + spec.lam * (p - t))).detach().requires_grad_(True)
                   for p, gi, t in zip(phi, g, theta)]
        return _common.imaml_from_phi(loss_at, phi, train, val, spec.lam, spec.cg_iters)

    return _common.mean_over_tasks(one, problem.tasks.num_tasks)


CASES = {
    "maml": maml,
    "fomaml": lambda problem, spec: maml(problem, spec, first_order=True),
    "imaml": imaml,
}
