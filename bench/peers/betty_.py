"""betty 0.2.1 (Choe et al. 2023): not measured.

betty expresses bilevel programs as ``Problem`` subclasses wired into an ``Engine`` that
runs whole training loops (its hypergradient ``"cg"``/``"neumann"`` modes are applied
inside ``Engine.run``); it has no call that returns one meta-gradient for a given θ and
meta-batch, which is what every other column times. Writing Problem/Engine subclasses
that stop after one hypergradient and expose it did not fit this issue's time box; the
package installs and imports (``scripts/install_peers.sh``; it declares Python < 3.11 but
is pure Python), so the adapter is a to-do, not an impossibility.
"""

from __future__ import annotations

NAME = "betty"
CASES: dict = {}


def available() -> str | None:
    try:
        import betty  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}"
    return "adapter not written (Engine-only API, see bench/peers/betty_.py)"
