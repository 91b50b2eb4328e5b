"""The numbers the README and the documentation quote from committed results (speed
ratios, errors, MSEs, intervals) are found in the result each cites, so that a number
cannot go stale silently when a result is regenerated or a sentence is edited. The rules
(what counts as a quoted number, what counts as found) are in ``tests/claims.py``."""

from __future__ import annotations

import claims

README = claims.ROOT / "README.md"
FINN = claims.ROOT / "docs" / "finn2017.md"


def test_every_quoted_number_is_in_the_result_it_cites():
    missing = [f"{c.where()}: {c.number} not in "
               f"{', '.join(str(f.relative_to(claims.RESULTS)) for f in c.folders)}"
               for c in claims.claims() if not claims.found(c)]
    assert not missing, "stale or uncited numbers:\n" + "\n".join(missing)


def test_the_check_reads_the_numbers_that_matter():
    # The parser must see the headline numbers (not skip them as settings or code).
    quoted = {(c.page, c.number) for c in claims.claims()}
    for page, number in ((README, "0.888"), (README, "0.077"), (README, "9.5"),
                         (FINN, "0.727"), (FINN, "0.143"), (FINN, "0.94"),
                         (claims.RESULTS / "study" / "README.md", "0.2605")):
        assert (page, number) in quoted, (page.name, number)
    # versions and numbers in code are not quotes
    assert not any(page == README and number.startswith("2.13") for page, number in quoted)


def test_a_stale_number_fails():
    # The study's headline with a stale interval, then a stale mean (the nearest values not
    # written anywhere in the study's tables): the check names the page and the number.
    text = README.read_text()
    study = claims.tokens(claims.RESULTS / "study")
    for old, at in (("0.077", 1), ("0.888", 0)):
        stale = next(f"{float(old) + k / 1000:.3f}" for k in range(1, 50)
                     if f"{float(old) + k / 1000:.3f}" not in study)
        headline = "0.888 ± 0.077"
        parts = headline.split(" ± ")
        parts[at] = stale
        changed = text.replace(headline, " ± ".join(parts), 1)
        assert changed != text
        quoted = [c for c in claims.claims({README: changed}) if c.page == README]
        bad = [c for c in quoted if not claims.found(c)]
        assert [c.number for c in bad] == [stale], [c.number for c in bad]
        assert bad[0].where().startswith("README.md:")
