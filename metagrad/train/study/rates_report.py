"""The report of ``metagrad train --preset rates`` (:mod:`metagrad.train.study.rates`), from
the tables each support size's study wrote (``shots<K>/comparison.csv`` and
``own_differences.csv``, :mod:`metagrad.train.study.aggregate`):

* ``rates.csv``: one row per support size and variant: the test MSE after the variant's
  own adaptation (mean over seeds, the 95 % interval for seeds and test tasks together and
  the seed part alone), the test MSE after one plain GD step at ``eval_lr`` beside it, the
  settings used, and the published number where there is one;
* ``rates_differences.csv``: the planned comparisons of every support size
  (:func:`metagrad.train.study.rates.comparisons`), a − b paired by seed, each pair's 95 %
  interval for seeds and test tasks and p-value as the study computed them, and Holm's
  adjustment over all of them together (one family); *resolved*: adjusted p < 0.05;
* ``rates_published.csv``: Li et al. 2017's numbers beside ours, with what matches;
* ``rates.md`` (the tables, the protocols side by side, what matches and what does not),
  ``rates.png``, and the folder's ``README.md``, whose every number is written in
  ``rates.md``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ... import plotting
from .. import outdir
from ..stats import holm
from . import rates as _rates
from .aggregate import ALPHA, BASELINE

FIGURE = "rates.png"


def _pm(mean: float, half: float) -> str:
    if mean != mean:
        return "n/a"
    return f"{mean:.3f}" if half != half else f"{mean:.3f} ± {half:.3f}"


def _pub(mean: float, half: float) -> str:
    """A published number as published (two decimals)."""
    return f"{mean:.2f} ± {half:.2f}"


def _p(p: float) -> str:
    return "n/a" if p != p else f"{p:.2g}"


def _diff(x: float) -> str:
    return f"{x + 0.0:.4f}"


def table(out: Path, record: dict[str, Any]) -> pd.DataFrame:
    """``rates.csv`` (see the module docstring), from each support size's
    ``comparison.csv``."""
    rows = []
    published = record["spec"]["published"]["mse"]
    for shots, sub in record["spec"]["folders"].items():
        path = out / sub / "comparison.csv"
        if not path.is_file():
            continue
        comp = pd.read_csv(path)
        for _, r in comp[comp["variant"] != BASELINE].iterrows():
            pub = published.get(r["variant"], {}).get(str(shots))
            rows.append({
                "shots": int(shots), "variant": r["variant"],
                "settings": r["settings"] if isinstance(r["settings"], str) and r["settings"]
                else "—",
                "seeds": int(r["seeds"]), "own_steps": r.get("own_steps", math.nan),
                "own_mse": r.get("own_mse", math.nan),
                "own_mse_ci": r.get("own_mse_ci", math.nan),
                "own_mse_seed_ci": r.get("own_mse_seed_ci", math.nan),
                "gd_mse_1": r["mse_1"], "gd_mse_1_ci": r["mse_1_ci"],
                "published_mse": math.nan if pub is None else pub[0],
                "published_ci": math.nan if pub is None else pub[1],
                "status": r["status"]})
    return pd.DataFrame(rows)


def _pair(diffs: pd.DataFrame, a: str, b: str) -> dict[str, float] | None:
    """a − b from a table of pairs that may hold it as b − a."""
    row, sign = diffs[(diffs["a"] == a) & (diffs["b"] == b)], 1.0
    if row.empty:
        row, sign = diffs[(diffs["a"] == b) & (diffs["b"] == a)], -1.0
    if row.empty:
        return None
    r = row.iloc[0]
    lo, hi = sorted((sign * r["ci_low"], sign * r["ci_high"]))
    return {"mean_diff": sign * r["mean_diff"], "ci_low": lo, "ci_high": hi,
            "p_value": r["p_value"], "seeds": int(r["seeds"]), "task_part": r["task_part"]}


def differences(out: Path, record: dict[str, Any], alpha: float = ALPHA) -> pd.DataFrame:
    """``rates_differences.csv`` (see the module docstring): the planned comparisons, with
    Holm's correction over all of them and every support size together."""
    rows = []
    for shots, sub in record["spec"]["folders"].items():
        path = out / sub / "own_differences.csv"
        diffs = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["a", "b"])
        for a, b, question in record["spec"]["comparisons"]:
            pair = _pair(diffs, a, b)
            if pair is not None:
                rows.append({"shots": int(shots), "a": a, "b": b, "question": question, **pair})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["shots", "a", "b", "question", "mean_diff", "ci_low",
                                     "ci_high", "p_value", "seeds", "task_part", "p_holm",
                                     "resolved"])
    frame["p_holm"] = holm(frame["p_value"].tolist())
    frame["resolved"] = frame["p_holm"] < alpha
    return frame


def _verdict(d: dict[str, Any] | None, published_lower: bool) -> str:
    """Whether our comparison agrees with the published direction."""
    if d is None:
        return "not measured"
    lower = d["mean_diff"] < 0
    same = lower == published_lower
    if d["resolved"]:
        return "matches (resolved)" if same else "does not match (the opposite, resolved)"
    return ("same direction, not resolved" if same
            else "opposite direction, not resolved")


def published(rates: pd.DataFrame, diffs: pd.DataFrame, record: dict[str, Any]
              ) -> pd.DataFrame:
    """``rates_published.csv``: per support size and published variant, the published
    number next to ours (own adaptation), whether it lies inside our interval, and whether
    the published ordering (Meta-SGD below MAML) is what we measure."""
    pub = record["spec"]["published"]["mse"]
    names = list(pub)
    rows = []
    measured = set(rates["shots"]) if not rates.empty else set()
    for shots in sorted({int(k) for v in pub.values() for k in v} & measured):
        ours = rates[rates["shots"] == shots].set_index("variant") if not rates.empty \
            else pd.DataFrame()
        d = diffs[(diffs["shots"] == shots) & (diffs["a"] == names[1])
                  & (diffs["b"] == names[0])] if not diffs.empty else diffs
        pair = {str(k): v for k, v in d.iloc[0].items()} if len(d) else None
        lower = pub[names[1]][str(shots)][0] < pub[names[0]][str(shots)][0]
        for name in names:
            mean, half = pub[name][str(shots)]
            have = name in ours.index
            m = float(ours.loc[name, "own_mse"]) if have else math.nan
            h = float(ours.loc[name, "own_mse_ci"]) if have else math.nan
            where = ("n/a" if m != m or h != h else "inside" if m - h <= mean <= m + h
                     else "below" if mean < m - h else "above")
            rows.append({"shots": shots, "variant": name,
                         "published": _pub(mean, half), "ours": _pm(m, h),
                         "published_in_our_interval": where,
                         "ordering": _verdict(pair, lower) if name == names[1] else ""})
    return pd.DataFrame(rows, columns=["shots", "variant", "published", "ours",
                                       "published_in_our_interval", "ordering"])


def _trend(rates: pd.DataFrame, name: str) -> str:
    """Whether our own-adaptation MSE of ``name`` falls as K grows (means)."""
    r = rates[rates["variant"] == name].sort_values("shots")
    values = r["own_mse"].tolist()
    if len(values) < 2 or any(v != v for v in values):
        return "not measured at several K"
    falls = all(b < a for a, b in zip(values, values[1:], strict=False))
    return ("falls with K (" if falls else "does not fall steadily with K (") + \
        ", ".join(f"{v:.3f}" for v in values) + ")"


def markdown(rates: pd.DataFrame, diffs: pd.DataFrame, pub: pd.DataFrame,
             record: dict[str, Any]) -> str:
    """``rates.md``: the tables, the protocols, what matches and what does not."""
    spec = record["spec"]
    base = spec["base"]
    seeds = spec["seeds"]
    source = spec["published"]["source"]
    lines = ["# Learned inner step sizes on sinusoid regression", "",
             f"Support sizes K = {', '.join(map(str, spec['shots']))} (each trained and tested "
             f"with K support points), seeds {', '.join(map(str, seeds))}, "
             f"{base['meta_steps']} meta-steps, meta-batch {base['meta_batch']}, "
             f"{base['query']} query points per task in training; test: "
             f"{base['heldout_tasks']} held-out tasks (seed {base['heldout_seed']}) with "
             f"{base['heldout_query']} query points each. One study per K in "
             + ", ".join(f"`{f}/`" for f in spec["folders"].values())
             + " (their `study.md`: every table, tuning, all pairs).", "",
             "**own adaptation**: the test tasks adapted by the variant's own inner loop "
             "(its K steps with its learned step sizes; MAML: plain GD at its inner_lr), the "
             "evaluation that defines Meta-SGD and the one the published numbers use; **GD "
             f"1 step**: one plain GD step at eval_lr = {base['eval_lr'] or base['inner_lr']} "
             "for every "
             "variant (the study's table). ± is the 95 % interval over the training seeds "
             "and the test tasks together (variance s²/S + σ²/T, Welch–Satterthwaite "
             "degrees of freedom); **seeds only** is the seed part alone.", ""]
    if not rates.empty:
        t = pd.DataFrame({
            "K": rates["shots"], "variant": rates["variant"], "settings": rates["settings"],
            "own steps": rates["own_steps"].map(lambda v: "" if v != v else str(int(v))),
            "own adaptation": [_pm(m, h) for m, h in
                               zip(rates["own_mse"], rates["own_mse_ci"], strict=True)],
            "seeds only": rates["own_mse_seed_ci"].map(
                lambda v: "" if v != v else f"± {v:.3f}"),
            "GD 1 step": [_pm(m, h) for m, h in
                          zip(rates["gd_mse_1"], rates["gd_mse_1_ci"], strict=True)],
            "published (Li et al.)": [_pub(m, h) if m == m else "" for m, h in
                                      zip(rates["published_mse"], rates["published_ci"],
                                          strict=True)],
            "seeds": rates["seeds"], "status": rates["status"]})
        lines += ["## Test MSE", "", t.to_markdown(index=False, disable_numparse=True), ""]
    if not diffs.empty:
        d = pd.DataFrame({
            "K": diffs["shots"], "a": diffs["a"], "b": diffs["b"],
            "a − b": diffs["mean_diff"].map(_diff),
            "95 % CI": [f"[{_diff(lo)}, {_diff(hi)}]" for lo, hi in
                        zip(diffs["ci_low"], diffs["ci_high"], strict=True)],
            "p": diffs["p_value"].map(_p), "p (Holm)": diffs["p_holm"].map(_p),
            "resolved": diffs["resolved"].map(lambda r: "yes" if r else "no")})
        lines += ["## The planned comparisons", "",
                  "a − b of the own-adaptation test MSE, paired by seed (negative: a is "
                  "better), with its 95 % interval for seeds and test tasks and the two-sided "
                  "p-value of its t statistic; *resolved* means the p-value after Holm's "
                  f"step-down correction (Holm 1979) over all {len(diffs)} comparisons of "
                  "this table is below 0.05.", "",
                  d.to_markdown(index=False, disable_numparse=True), "",
                  f"{int(diffs['resolved'].sum())} of {len(diffs)} resolved after Holm's "
                  f"correction ({int((diffs['p_value'] < ALPHA).sum())} with p < 0.05 "
                  "uncorrected).", ""]
    lines += ["## The published numbers", "",
              f"Source: {source}. Their ± is the {spec['published']['interval']}; ours "
              "(own adaptation, as theirs) is over seeds and test tasks.", ""]
    if not pub.empty:
        lines += [pub.rename(columns={
            "shots": "K", "published_in_our_interval": "published value vs our interval",
            "ordering": "Meta-SGD below MAML?"}).to_markdown(index=False,
                                                             disable_numparse=True), ""]
    ours = spec["ours"]
    lines += ["The protocols side by side:", "",
              pd.DataFrame({"aspect": [a for a, _ in spec["protocol"]],
                            "Li et al. 2017": [b for _, b in spec["protocol"]],
                            "this study": [ours[a] for a, _ in spec["protocol"]]}
                           ).to_markdown(index=False), ""]
    lines += ["## What matches and what does not", ""] + \
        [f"* {s}" for s in findings(rates, diffs, pub, record)] + [""]
    return "\n".join(lines)


def findings(rates: pd.DataFrame, diffs: pd.DataFrame, pub: pd.DataFrame,
             record: dict[str, Any]) -> list[str]:
    """The sentences of "what matches and what does not", each built from the tables."""
    spec = record["spec"]
    names = list(spec["published"]["mse"])
    out = []
    differ = [a for a, _ in spec["protocol"] if a != "network"]
    out.append("The protocols differ in " + ", ".join(differ) + " (table above), so the "
               "levels are not expected to agree; the ordering and the trend with K are "
               "what can be compared.")
    for shots in sorted(set(pub["shots"])) if not pub.empty else []:
        p = pub[pub["shots"] == shots].set_index("variant")
        order = p.loc[names[1], "ordering"]
        d = diffs[(diffs["shots"] == shots) & (diffs["a"] == names[1])
                  & (diffs["b"] == names[0])] if not diffs.empty else diffs
        if len(d):
            r = d.iloc[0]
            measured = (f"{names[1]} − {names[0]} = {_diff(r['mean_diff'])} "
                        f"[{_diff(r['ci_low'])}, {_diff(r['ci_high'])}], Holm-adjusted "
                        f"p = {_p(r['p_holm'])}")
        else:
            measured = "not measured"
        out.append(f"K = {shots}: published {names[1]} {p.loc[names[1], 'published']} "
                   f"against {names[0]} {p.loc[names[0], 'published']}; here {measured}: "
                   f"{order}. The published values lie "
                   f"{p.loc[names[0], 'published_in_our_interval']} ({names[0]}) and "
                   f"{p.loc[names[1], 'published_in_our_interval']} ({names[1]}) our "
                   "intervals.")
    if not rates.empty:
        for name in names:
            out.append(f"Published {name} falls with K; ours {_trend(rates, name)}.")
    others = [f"{r['a']} − {r['b']} at K = {r['shots']}: {_diff(r['mean_diff'])} "
              f"[{_diff(r['ci_low'])}, {_diff(r['ci_high'])}], "
              + ("resolved" if r["resolved"] else "not resolved")
              for _, r in diffs.iterrows()
              if not (r["a"] == names[1] and r["b"] == names[0])] if not diffs.empty else []
    if others:
        out.append("No published sinusoid numbers exist for the per-step rates or the "
                   "multi-step loss (MAML++ was evaluated on image benchmarks only). Measured "
                   "here: " + "; ".join(others) + ".")
    return out


def figure(rates: pd.DataFrame, record: dict[str, Any], path: Path) -> Path:
    """Own-adaptation test MSE against K per variant (95 % intervals, seeds and test tasks),
    with the published values as open markers."""
    plotting.setup()
    fig, ax = plotting.plt.subplots(figsize=(8.0, 4.2))
    colors = plotting.sns.color_palette("colorblind", max(1, rates["variant"].nunique()))
    shift = 0.15
    for i, name in enumerate(dict.fromkeys(rates["variant"])):
        r = rates[rates["variant"] == name].sort_values("shots")
        x = [s * (1 + shift * (i - 2) / 10) for s in r["shots"]]
        ax.errorbar(x, r["own_mse"], yerr=r["own_mse_ci"].fillna(0), marker="o", ms=4,
                    capsize=3, color=colors[i], label=name)
        pub = record["spec"]["published"]["mse"].get(name)
        if pub:
            ks = sorted(int(k) for k in pub)
            ax.errorbar(ks, [pub[str(k)][0] for k in ks], yerr=[pub[str(k)][1] for k in ks],
                        fmt="s", mfc="none", ms=6, capsize=2, color=colors[i], alpha=0.7,
                        label=f"{name}, Li et al. 2017")
    ax.set_xscale("log")
    ax.set_yscale("log")
    published = record["spec"]["published"]["mse"].values()
    plotting.value_ticks(ax, {*record["spec"]["shots"], *(int(k) for v in published for k in v)},
                         "x")
    plotting.plain_log_labels(ax, "y")
    ax.set_xlabel("K (support points)")
    ax.set_ylabel("test MSE, own adaptation")
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return plotting.save(fig, path)


def readme(rates: pd.DataFrame, diffs: pd.DataFrame, pub: pd.DataFrame,
           record: dict[str, Any], command: str) -> str:
    """The folder's ``README.md``: how it was made, the headline table and the findings;
    every number in it is written in ``rates.md`` (the claims check reads it)."""
    spec = record["spec"]
    lines = ["# Learned inner step sizes: Meta-SGD and per-step rates beside MAML", "",
             "```bash", command, "```", "",
             "Meta-SGD (one learned step size per parameter entry, Li et al. 2017) and "
             "MAML++-style per-layer per-step step sizes, with and without the multi-step loss "
             "(Antoniou et al. 2019, §4), beside MAML on sinusoid regression at K = "
             + ", ".join(map(str, spec["shots"])) + f" support points, {len(spec['seeds'])} "
             "seeds each. The learned rates are meta-parameters stepped with the "
             "initialisation by the same Adam; their starting value was chosen on "
             "validation tasks. `rates.md` has every table (and `provenance.json` the "
             "commit, the machine and the time); each K's study, with its tuning and all "
             "pairs, is in " + ", ".join(f"`{f}/`" for f in spec["folders"].values()) + ".",
             ""]
    if not rates.empty:
        t = pd.DataFrame({
            "K": rates["shots"], "variant": rates["variant"],
            "own adaptation": [_pm(m, h) for m, h in
                               zip(rates["own_mse"], rates["own_mse_ci"], strict=True)],
            "GD 1 step": [_pm(m, h) for m, h in
                          zip(rates["gd_mse_1"], rates["gd_mse_1_ci"], strict=True)],
            "published": [_pub(m, h) if m == m else "" for m, h in
                          zip(rates["published_mse"], rates["published_ci"], strict=True)]})
        lines += ["Test MSE (mean over seeds ± 95 % interval for seeds and test tasks; own "
                  "adaptation: the variant's own K steps with its learned rates; GD 1 step: "
                  "one plain GD step at eval_lr for all; published: Li et al. 2017, Table 1, "
                  "their interval over test tasks):", "",
                  t.to_markdown(index=False, disable_numparse=True), ""]
    lines += ["What the comparison shows (Holm's correction over the planned comparisons; "
              "details in `rates.md`):", ""]
    lines += [f"* {s}" for s in findings(rates, diffs, pub, record)] + [""]
    return "\n".join(lines)


def write_report(out: Path, record: dict[str, Any], command: str) -> dict[str, Path]:
    """Write the report's tables, figure and ``README.md`` into ``out`` (see the module
    docstring); returns the paths."""
    rates = table(out, record)
    diffs = differences(out, record)
    pub = published(rates, diffs, record)
    paths = {"table": out / "rates.csv", "differences": out / "rates_differences.csv",
             "published": out / "rates_published.csv", "markdown": out / "rates.md",
             "readme": out / "README.md"}
    rates.to_csv(paths["table"], index=False)
    diffs.to_csv(paths["differences"], index=False)
    pub.to_csv(paths["published"], index=False)
    paths["markdown"].write_text(markdown(rates, diffs, pub, record))
    paths["readme"].write_text(readme(rates, diffs, pub, record, command))
    if not rates.empty:
        paths["figure"] = figure(rates, record, out / FIGURE)
    outdir.write_json(out / _rates.FILE, record)
    return paths


__all__ = ["FIGURE", "differences", "figure", "findings", "markdown", "published", "readme",
           "table", "write_report"]
