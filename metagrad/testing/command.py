"""``metagrad audit``: check a meta-gradient implementation against the oracle.

    metagrad audit TARGET --method M [--steps K] [--inner-lr A] [--lam L] [--cg-iters M]
                   [--terms J] [--step ETA] [--inner FORM[,FORM]] [--step-weights W,…]
                   [--module CRITERION] [--variant NAME] [--float32] [--timeout S]
                   [--out DIR]

TARGET is ``package.module:name``, a callable importable from the current directory or
the environment: a target ``target(loss, params, tasks) -> dict[str, Tensor]`` or a
factory ``factory(**settings) -> target`` (a factory is also run at other inner step
counts), told apart by signature as in :func:`metagrad.testing.check_meta_gradient`; or
``peer:NAME`` for a peer library (higher, learn2learn, torchopt, betty), whose adapter
``metagrad_bench.peers.<NAME>_`` maps metagrad's method names to factories
(``AUDIT_TARGETS``), lists the inner-loop forms each one runs (``AUDIT_INNER``) and has
library-native alternatives (``AUDIT_VARIANTS``, chosen with ``--variant``). ``--inner``
names an inner-loop variant (:mod:`metagrad.testing.variant`: learned rates per entry, per
step, per tensor or one for all, ANIL, momentum, Nesterov, Adam, the multi-step loss; several
comma-separated or repeated), which the battery builds on each problem and gives a factory
as ``inner_lr`` (the rates), ``inner`` (the update rule) and ``step_weights``;
``--step-weights`` gives MAML's multi-step loss weights. Settings the method reads and the
command line does not give take the method's defaults
(``mg.METHODS[M].default_settings()``). With ``--module CRITERION`` (``cross_entropy`` or
``mse``) TARGET is code written against an ``nn.Module``,
``fn(model, tasks)`` (see :func:`metagrad.testing.module_target`). The target runs isolated:
an exception, ``sys.exit``, ``os._exit`` or a run past ``--timeout`` seconds is a failed
case, never the command's own exit (``--timeout`` defaults to 600 s per call). ``--out`` is
checked before any work. Prints the table
and the diagnosis, writes ``audit.md``, ``audit.csv`` and ``audit.json`` into ``--out``;
exit status 0 when every case passes, 1 when one fails, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings
from typing import Any

from .._app import UsageError, prepare_out
from ..methods import METHODS, SETTINGS, method_class
from .isolate import first_line

PEERS = ("higher", "learn2learn", "torchopt", "betty")

INNER_NAMES = ("per_entry", "per_step", "per_tensor", "one_rate", "anil", "momentum",
               "nesterov", "adam", "multistep")
"""The forms ``--inner`` takes (``metagrad.testing.variant.AUDIT_FORMS``, named here so that
``metagrad --help`` does not import torch)."""

FLAGS = {"steps": ("--steps", int), "inner_lr": ("--inner-lr", float), "lam": ("--lam", float),
         "cg_iters": ("--cg-iters", int), "terms": ("--terms", int), "step": ("--step", float)}
"""setting → (flag, type); one flag per name of ``metagrad.SETTINGS``."""
assert tuple(FLAGS) == SETTINGS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="check a meta-gradient implementation (yours or a peer library's) against the "
             "oracle; exit 1 on failure",
        description="Run TARGET on a battery of small float64 problems and compare its mean "
                    "meta-gradient with the dense oracle (relative error ≤ 1e-9) and finite "
                    "differences (≤ 1e-7); a failure is diagnosed against the usual wrong "
                    "variants (first order, sum over tasks, off-by-one CG, stale-residual CG, "
                    "…).")
    p.add_argument("target", metavar="TARGET",
                   help="package.module:callable (a target or a factory taking the settings), "
                        f"or peer:NAME with NAME in {', '.join(PEERS)}")
    p.add_argument("--method", required=True, metavar="METHOD",
                   help=f"the method TARGET claims to compute: {', '.join(METHODS)} (or one "
                        "TARGET's module registers)")
    for name, (flag, kind) in FLAGS.items():
        p.add_argument(flag, dest=name, type=kind, default=None,
                       help=f"{name} (default: the method's own)")
    p.add_argument("--inner", action="append", default=None, metavar="FORM[,FORM]",
                   help="the inner-loop variant: " + ", ".join(INNER_NAMES) + " (several "
                        "comma-separated or repeated, e.g. per_step,adam); the audit builds the "
                        "rates on each problem and passes them to the factory as inner_lr")
    p.add_argument("--step-weights", default=None, metavar="W1,W2,…",
                   help="MAML's multi-step loss weights, one per inner step")
    p.add_argument("--variant", default=None,
                   help="peer:NAME only: a library-native alternative from the adapter's "
                        "AUDIT_VARIANTS (e.g. 'imaml normal_cg' for torchopt)")
    p.add_argument("--module", default=None, metavar="CRITERION",
                   choices=("cross_entropy", "mse"),
                   help="TARGET is code written against an nn.Module, fn(model, tasks), whose "
                        "loss is CRITERION(model(x), y): cross_entropy or mse")
    p.add_argument("--float32", action="store_true",
                   help="give the target float32 problems; tolerances from float32's epsilon")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds one call of TARGET may take; a longer one is a failed case "
                        "(default 600: the battery's problems are tiny, so that is a hang)")
    p.add_argument("--out", default="audit", help="folder for audit.md, audit.csv and "
                                                   "audit.json (default: audit/)")
    p.set_defaults(func=run)


def settings_from(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """The method's settings: the flags given, its class defaults for the others; an
    unknown method or a flag the method does not read is a :class:`UsageError`."""
    try:
        cls = method_class(method)
    except ValueError as err:
        raise UsageError(str(err)) from None
    names = cls.setting_names()
    extra = [FLAGS[k][0] for k, v in given.items() if v is not None and k not in names]
    if extra:
        raise UsageError(f"{method} does not read {', '.join(extra)}; it reads "
                         f"{', '.join(FLAGS[n][0] for n in names)}")
    defaults = cls.default_settings()
    return {n: given[n] if given.get(n) is not None else defaults[n] for n in names}


def _peer_module(name: str):
    if name not in PEERS:
        raise UsageError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    module = importlib.import_module(f"metagrad_bench.peers.{name}_")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if hasattr(module, "_import"):
                module._import()
            else:
                importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any import failure: not installed here
        raise UsageError(f"{name} does not import here ({type(err).__name__}: {err}); "
                         "install the peers with: bash scripts/install_peers.sh") from None
    return module


def inner_forms(inner: Any) -> list[str]:
    """The form names of ``--inner`` (repeated and comma-separated), in order."""
    if inner is None:
        return []
    items = [inner] if isinstance(inner, str) else list(inner)
    return [s.strip() for item in items for s in item.split(",") if s.strip()]


def resolve(spec: str, method: str, variant: str | None = None,
            inner: Any = None) -> tuple[Any, str]:
    """``(target or factory, label)`` for TARGET ``spec``; a :class:`UsageError` naming
    what is wrong (format, import, a method the library does not offer, an inner-loop form
    its adapter does not run)."""
    if spec.startswith("peer:"):
        name = spec.split(":", 1)[1]
        module = _peer_module(name)
        forms = inner_forms(inner)
        runs = getattr(module, "AUDIT_INNER", {}).get(method, ())
        missing = [f for f in forms if f not in runs]
        if missing:
            offered = ", ".join(runs) if runs else "none"
            raise UsageError(f"{name}'s {method} does not run the inner-loop form(s) "
                             f"{', '.join(missing)}; it runs: {offered}")
        if variant is not None:
            if variant not in module.AUDIT_VARIANTS and f"{method} {variant}" in \
                    module.AUDIT_VARIANTS:
                variant = f"{method} {variant}"  # `--method imaml --variant normal_cg`
            if variant not in module.AUDIT_VARIANTS:
                raise UsageError(f"{name} has no variant {variant!r}; it has "
                                 f"{', '.join(map(repr, module.AUDIT_VARIANTS)) or 'none'}")
            return module.AUDIT_VARIANTS[variant], f"peer:{name} ({variant})"
        if method not in module.AUDIT_TARGETS:
            raise UsageError(f"{name} offers no {method}; it offers "
                             f"{', '.join(module.AUDIT_TARGETS)}")
        return module.AUDIT_TARGETS[method], f"peer:{name}"
    if variant is not None:
        raise UsageError("--variant applies to peer:NAME targets only")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"TARGET must be package.module:callable or peer:NAME, got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the current directory's modules import
    try:
        obj: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - its own exit must not end the audit
        raise UsageError(f"cannot import {module_name!r} ({type(err).__name__}: "
                         f"{first_line(err)})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not a callable")
    return obj, spec


def step_weights_from(text: str | None) -> tuple[float, ...] | None:
    """``--step-weights 0.2,0.8`` as floats; a :class:`UsageError` for anything else."""
    if text is None:
        return None
    try:
        return tuple(float(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise UsageError(f"--step-weights must be comma-separated numbers, got {text!r}") \
            from None


def audit(spec: str, method: str, settings: dict[str, Any] | None = None, *,
          variant: str | None = None, float32: bool = False, module: str | None = None,
          timeout: float | None = None, given: dict[str, Any] | None = None,
          inner: Any = None, step_weights: tuple[float, ...] | None = None):
    """The audit ``metagrad audit`` runs (also used by ``metagrad_bench.audit_peers``).
    ``given``: the settings flags as typed (None where absent), read after TARGET is
    imported, so that a method its module registers is known; ``inner``: the ``--inner``
    forms, ``step_weights``: MAML's multi-step loss weights."""
    from .check import check_meta_gradient
    from .modules import module_target

    target, label = resolve(spec, method, variant, inner)
    if settings is None:
        settings = settings_from(method, given or {})
    if module is not None:
        target = module_target(target, module)
    quiet = warnings.catch_warnings() if spec.startswith("peer:") else contextlib.nullcontext()
    with quiet:
        if spec.startswith("peer:"):
            warnings.simplefilter("ignore")  # the libraries' deprecation notices
        try:
            result = check_meta_gradient(target, method, float32=float32, timeout=timeout,
                                         inner=inner_forms(inner) or None,
                                         step_weights=step_weights, **settings)
        except TypeError as err:  # a factory that does not take these settings
            raise UsageError(f"{label} as {method}: {err}") from None
    result.target = label
    return result


def run(args: argparse.Namespace) -> int:
    out = prepare_out(args.out)  # before any work: a file in the way is one line, exit 2
    given = {k: getattr(args, k) for k in FLAGS}
    result = audit(args.target, args.method, variant=args.variant, float32=args.float32,
                   module=args.module, timeout=args.timeout, given=given, inner=args.inner,
                   step_weights=step_weights_from(args.step_weights))
    print(result.report())
    written = [result.to_markdown(out / "audit.md"), result.to_csv(out / "audit.csv"),
               result.to_json(out / "audit.json")]
    print(f"\n{'PASSED' if result.passed else 'FAILED'}; wrote "
          + ", ".join(str(p) for p in written))
    return 0 if result.passed else 1
