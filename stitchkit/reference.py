"""The reference work's findings (GPT-2 small, blocks.8.hook_resid_pre, the 1,536-wide ReLU SAE
against the 768-wide one), and a study's own numbers beside them, row by row: for the report and
the terminal. Reads results.json's content; computes no measurement."""

from __future__ import annotations

# What the reference work reports for GPT2-1536 vs GPT2-768 (see docs/design.md, "the science").
REFERENCE = dict(
    pair="GPT2-1536 vs GPT2-768",
    n_large=1536,
    novel=657,
    novel_helps=628,
    novel_hurts=29,
    recon_helps=281,
    recon_hurts=598,
    plus_novel_change=-0.10,
)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def reference_rows(res: dict) -> list[dict]:
    """[{finding, reference, this_run, verdict}] for the headline pair of `res` (a study's
    to_dict()); empty when it has none."""
    head = next((p for p in res.get("pairs", []) if p.get("pair") == res.get("headline")), None)
    if head is None:
        return []
    r = REFERENCE
    rows = []
    frac = head["novel"] / head["n_large"]
    ref_frac = r["novel"] / r["n_large"]
    rows.append(dict(
        finding="novel features of the large SAE (max cos <= threshold)",
        reference=f"{r['novel']} of {r['n_large']} ({ref_frac:.0%})",
        this_run=f"{head['novel']} of {head['n_large']} ({frac:.0%})",
        verdict="close (within 10 points)" if abs(frac - ref_frac) <= 0.10 else "differs",
    ))  # fmt: skip
    n_nov = head["novel_helps"] + head["novel_hurts"]
    n_rec = head["recon_helps"] + head["recon_hurts"]
    nh = head["novel_helps"] / n_nov if n_nov else None
    rh = head["recon_hurts"] / n_rec if n_rec else None
    ref_nh = r["novel_helps"] / (r["novel_helps"] + r["novel_hurts"])
    ref_rh = r["recon_hurts"] / (r["recon_helps"] + r["recon_hurts"])
    share_nh = f"{nh:.0%} of novel help" if nh is not None else "no novel features"
    share_rh = f"{rh:.0%} of reconstruction hurt" if rh is not None else "no reconstruction features"
    if nh is None or rh is None:  # an empty class has no share and no verdict
        empty = " and ".join(c for c, v in (("novel", nh), ("reconstruction", rh)) if v is None)
        verdict = f"no verdict: the {empty} class is empty at this threshold"
    elif nh > 0.5 and rh > 0.5:
        verdict = "same pattern"
    else:
        worse = "novel features mostly hurt" if nh <= 0.5 else "reconstruction features mostly help"
        verdict = f"differs: {worse}"
    rows.append(dict(
        finding="2x2: novel help / hurt; reconstruction help / hurt (inserted alone)",
        reference=f"{r['novel_helps']} / {r['novel_hurts']}; {r['recon_helps']} / {r['recon_hurts']} "
                  f"({ref_nh:.0%} of novel help, {ref_rh:.0%} of reconstruction hurt)",
        this_run=f"{head['novel_helps']} / {head['novel_hurts']}; {head['recon_helps']} / "
                 f"{head['recon_hurts']} ({share_nh}, {share_rh})",
        verdict=verdict,
    ))  # fmt: skip
    change = head["plus_novel_change"]
    rows.append(dict(
        finding="small SAE + every novel feature at once: MSE change",
        reference=f"about {_pct(r['plus_novel_change'])}",
        this_run=f"{_pct(change)} ({head['mse_small']:.4g} -> {head['mse_plus_novel']:.4g})",
        verdict="lower, as in the reference" if change < 0 else "differs: higher",
    ))  # fmt: skip
    g = head["n_groups"]
    if g:
        low, raise_ = head["swaps_lower_l0"] / g, head["swaps_raise_mse"] / g
        rows.append(dict(
            finding="swap groups applied alone: lower L0, a bit more MSE",
            reference="most groups lower L0 and raise MSE slightly",
            this_run=f"{g} groups: {low:.0%} lower L0, {raise_:.0%} raise MSE "
                     f"(mean dL0 {head['mean_swap_dl0']:+.3g}, dMSE {head['mean_swap_dmse']:+.3g})",
            verdict="same" if low > 0.5 and raise_ > 0.5 else "differs: " + (
                "most do not lower L0" if low <= 0.5 else "most do not raise MSE"),
        ))  # fmt: skip
    rows.append(dict(
        finding="interpolation: small -> +novel -> swaps, towards the large SAE",
        reference="MSE descends from the small SAE's towards the large SAE's",
        this_run=f"MSE {head['path_start']:.4g} -> {head['path_after_novel']:.4g} -> {head['path_end']:.4g} "
                 f"(large SAE {head['mse_large']:.4g})",
        verdict="descends" if head["path_end"] < head["path_start"] else "differs: it climbs",
    ))  # fmt: skip
    fr = res.get("frankenstein") or []
    if fr:
        last = fr[-1]
        lower, higher = last["mse"] < last["reference_mse"], last["l0"] > last["reference_l0"]
        rows.append(dict(
            finding="Frankenstein vs the nearest original SAE",
            reference="lower MSE, bought with a higher L0",
            this_run=f"MSE {last['mse']:.4g} vs {last['reference_mse']:.4g}, "
                     f"L0 {last['l0']:.4g} vs {last['reference_l0']:.4g} ({last['reference']})",
            verdict="same" if lower and higher else "differs",
        ))  # fmt: skip
    front = res.get("frontier")
    if front and front.get("area") == front.get("area"):
        rows.append(dict(
            finding="at equal L0 (stitched frontier vs the family; area between the budget curves)",
            reference="not measured (the reference names it as its limit)",
            this_run=f"mean MSE gap {front['mean_gap']:+.4g} over L0 "
                     f"{front['l0_from']:.3g}..{front['l0_to']:.3g}",
            verdict="stitching wins at equal L0" if front["area"] > 0 else "the family wins at equal L0",
        ))  # fmt: skip
    return rows
