"""The API reference is complete: every public name of ``metagrad`` and ``metagrad.testing``
has exactly one entry in ``docs/reference/*.md``, and every public callable that takes
arguments documents each of them in a numpy-style ``Parameters`` section (classes may use
``Attributes`` for fields that are results), and says what it returns in a ``Returns``
section.

The docstrings are read here with a small parser of their own (section headings underlined
with dashes, entries ``name : type`` at the section's indentation), not with the docs
toolchain, so the check runs wherever the tests do.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import metagrad
import metagrad.testing

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
PUBLIC_MODULES = (metagrad, metagrad.testing)
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.M)
HEADING = re.compile(r"^([A-Z][A-Za-z ]*)\n(-{3,})[ \t]*$", re.M)
ENTRY = re.compile(r"^(\**[A-Za-z_]\w*(?:\s*,\s*\**[A-Za-z_]\w*)*)\s*(?::.*)?$")


def resolve(path: str) -> Any:
    """The object a ``::: path`` directive names: the longest importable module prefix, then
    attributes (as mkdocstrings resolves it, and failing the same way on a typo)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def directives(text: str | None = None) -> list[tuple[str, Any]]:
    texts = [text] if text is not None else [p.read_text() for p in sorted(REFERENCE.glob("*.md"))]
    return [(path, resolve(path)) for t in texts for path in DIRECTIVE.findall(t)]


def entries_of(name: str, obj: Any, found: list[tuple[str, Any]]) -> list[str]:
    """The directives that render ``obj``: one naming it (same object, same last name:
    ``1e-9`` is not ``REF_RTOL``), or one naming a whole module that defines or exports it
    under that name (a module's entry renders its public members)."""
    own = [p for p, o in found if o is obj and p.rsplit(".", 1)[-1] == name]
    in_module = [p for p, o in found if isinstance(o, ModuleType)
                 and (getattr(obj, "__module__", None) == o.__name__
                      or getattr(o, name, None) is obj)]
    return own + in_module


def public() -> list[tuple[str, str, Any]]:
    return [(m.__name__, n, getattr(m, n)) for m in PUBLIC_MODULES for n in m.__all__]


def parameters(obj: Any) -> list[str]:
    """The names a caller passes: the signature without ``self`` and ``*args``/``**kwargs``
    (a dataclass's fields, a function's arguments); [] for what is not called."""
    if not (inspect.isroutine(obj) or inspect.isclass(obj)):
        return []
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return []
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]


def docstrings(obj: Any) -> list[str]:
    """What the reference renders for ``obj``: its own docstring, and for a class the
    docstring of an ``__init__`` written in the class (merged into the class's entry)."""
    own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    docs = [inspect.cleandoc(own)] if own else []
    if inspect.isclass(obj):
        init = obj.__dict__.get("__init__")
        generated = dataclasses.is_dataclass(obj)  # its __init__ has no docstring of its own
        if init is not None and init.__doc__ and not generated:
            docs.append(inspect.cleandoc(init.__doc__))
    return docs


def sections(doc: str) -> dict[str, list[str]]:
    """numpy-style sections: heading underlined with dashes of the same length -> the
    names its entries list (lines at the section's own indentation)."""
    found: dict[str, list[str]] = {}
    heads = [m for m in HEADING.finditer(doc) if len(m.group(2)) == len(m.group(1))]
    for head, nxt in zip(heads, heads[1:] + [None]):
        body = doc[head.end(): nxt.start() if nxt else len(doc)]
        names = []
        for line in body.splitlines():
            match = ENTRY.match(line)
            if line[:1].strip() and match:
                names += [n.strip().lstrip("*") for n in match.group(1).split(",")]
        found.setdefault(head.group(1), []).extend(names)
    return found


def returns_something(obj: Any) -> bool:
    if not inspect.isroutine(obj):
        return False
    annotation = inspect.signature(obj).return_annotation
    return annotation not in (None, "None", inspect.Signature.empty)


def missing_documentation(obj: Any) -> list[str]:
    """What the docstring of a public callable lacks, in words ([] when complete)."""
    wanted = parameters(obj)
    problems = []
    merged: dict[str, list[str]] = {}
    for doc in docstrings(obj):
        for title, names in sections(doc).items():
            merged.setdefault(title, []).extend(names)
    if wanted:
        allowed = ("Parameters", "Attributes") if inspect.isclass(obj) else ("Parameters",)
        listed = {n for title in allowed for n in merged.get(title, [])}
        if not any(title in merged for title in allowed):
            problems.append("no Parameters section")
        else:
            absent = [n for n in wanted if n not in listed]
            if absent:
                problems.append(f"Parameters section does not list {absent}")
    if returns_something(obj) and "Returns" not in merged and "Yields" not in merged:
        problems.append("no Returns section")
    return problems


PUBLIC = public()
CALLABLES = [(m, n, o) for m, n, o in PUBLIC if parameters(o) or returns_something(o)]


@pytest.mark.parametrize("module, name, obj", PUBLIC, ids=[f"{m}.{n}" for m, n, _ in PUBLIC])
def test_every_public_name_has_exactly_one_entry(module, name, obj):
    entries = entries_of(name, obj, directives())
    assert entries, f"{module}.{name} has no '::: ' entry in docs/reference/*.md"
    assert len(entries) == 1, f"{module}.{name} is rendered {len(entries)} times: {entries}"


@pytest.mark.parametrize("module, name, obj", CALLABLES,
                         ids=[f"{m}.{n}" for m, n, _ in CALLABLES])
def test_every_public_callable_documents_parameters_and_returns(module, name, obj):
    problems = missing_documentation(obj)
    assert not problems, f"{module}.{name}: {'; '.join(problems)}"


def test_every_entry_names_something_that_exists():
    for path, _ in directives():  # resolve() raises on a typo
        assert path.split(".")[0] in ("metagrad", "metagrad_reference"), path


# -- the checks themselves can fail -----------------------------------------------------------


def test_an_omitted_name_is_caught():
    api = (REFERENCE / "api.md").read_text()
    omitted = api.replace("::: metagrad.set_grads\n", "")
    assert entries_of("set_grads", metagrad.set_grads, directives(api))
    assert not entries_of("set_grads", metagrad.set_grads, directives(omitted))


def test_a_module_entry_counts_as_a_second_rendering():
    twice = directives("::: metagrad.distributed\n\n::: metagrad.shard_tasks\n")
    assert len(entries_of("shard_tasks", metagrad.shard_tasks, twice)) == 2


def test_the_parser_reads_numpy_sections_and_catches_what_is_missing():
    def documented(a: int, b: float = 1.0) -> float:
        """Add.

        Parameters
        ----------
        a : int
            First.
        b : float, optional
            Second.

        Returns
        -------
        float
            The sum.
        """
        return a + b

    def half(a: int, b: float = 1.0) -> float:
        """Add.

        Parameters
        ----------
        a : int
            First; ``b : float`` is mentioned here but not listed.
        """
        return a + b

    def sphinx(a: int) -> int:
        """Identity.

        :param a: the value
        :returns: a
        """
        return a

    assert missing_documentation(documented) == []
    assert missing_documentation(half) == ["Parameters section does not list ['b']",
                                           "no Returns section"]
    assert missing_documentation(sphinx) == ["no Parameters section", "no Returns section"]


def test_make_problem_lists_every_valid_name():
    from metagrad.problems import make_problem, problem_names

    doc = make_problem.__doc__ or ""
    for name in [*problem_names(), "linreg<d>"]:
        assert f'``"{name}"``' in doc, name
