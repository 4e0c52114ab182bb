"""``cimcosim report``: one self-contained folder (``DIR/report/``) with a section per seed figure or table
the run produced -- ``index.html`` (relative links to copied PNGs, no network), ``report.md`` and
``summary.json`` (the same numbers for scripts). Each section names the seed figure it reproduces, puts the
run's key numbers beside the seed's and lists the settings that produced them; a stage that has not run is
listed as such, with the command that runs it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.artifacts import ArtifactError, read_json, write_json
from pipeline.graph import STAGE_NAMES
from pipeline.report_html import to_html

log = logging.getLogger(__name__)


@dataclass
class Section:
    """One seed figure or table."""

    id: str
    title: str
    seed: str
    """The seed figure or table reproduced."""
    status: str = "not run"
    caption: str = ""
    figures: list[str] = field(default_factory=list)
    """PNG paths relative to the run folder."""
    tables: list[str] = field(default_factory=list)
    """Markdown tables (or short markdown blocks)."""
    numbers: dict[str, Any] = field(default_factory=dict)
    seed_numbers: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    how: str = ""
    """The command that produces this section when it has not run."""


def _read(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(path) if path.is_file() else None
    except Exception as exc:  # noqa: BLE001 - a corrupt table is reported in the section, not fatal
        log.warning("report: %s unreadable (%s); its section is left out", path, exc)
        return None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path, fix="re-run its stage") if path.is_file() else None
    except ArtifactError as exc:
        log.warning("report: %s", exc)
        return None


def _figs(run: Path, *rels: str) -> list[str]:
    return [r for r in rels if (run / r).is_file()]


def _md_table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [floatfmt.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sa_pass_rate(run: Path) -> Section:
    s = Section("sa_pass_rate", "SA sense pass rate vs partial sum, per W/L", "seed 001 Fig. 2(b)",
                how="cimcosim characterize --run-dir DIR")
    df = _read(run / "characterize/pass_rate.parquet")
    if df is None:
        return s
    sa = df[df.circuit == "sa"]
    for wl, g in sa.groupby("wl_ratio"):
        g = g.sort_values("level")
        s.numbers[f"W/L {wl:g}"] = {"pass_rate_lowest_level": float(g.pass_rate.iloc[0]),
                                    "pass_rate_highest_level": float(g.pass_rate.iloc[-1]),
                                    "mean_pass_rate": float(g.pass_rate.mean()), "samples": int(g.n_samples.max())}
    s.seed_numbers = {"trend": "pass rate falls as the partial sum (bitline current) grows; larger W/L passes more"}
    man = _json(run / "characterize/manifest.json") or {}
    s.settings = {k: man.get("config", {}).get(k) for k in ("samples", "wl_ratios", "resolution_bits", "tech")}
    s.figures = _figs(run, "characterize/pass_rate.png")
    s.caption = ("Probability that one SA decides correctly between the partial sum and its nearest reference, from "
                 "ngspice Monte Carlo (Pelgrom mismatch, FreePDK45 BSIM4).")
    s.tables = [_md_table(pd.DataFrame([{"W/L": k, **v} for k, v in s.numbers.items()]))]
    s.status = "ok"
    return s


def sigma_fit(run: Path) -> Section:
    s = Section("sigma_fit", "Gaussian Iref-offset fit from the pass rate", "seed 001 Fig. 3",
                how="cimcosim fit --run-dir DIR")
    doc = _json(run / "fit/offset_model.json")
    if doc is None:
        return s
    for m in doc["models"]:
        law = m["power_law_sigma_over_iref"]
        s.numbers[f"W/L {m['wl_ratio']:g}"] = {"sigma_over_iref_a": law["a"], "exponent_b": law["b"], "r2": law["r2"]}
    s.seed_numbers = {"model": "Iref offset ~ N(0, sigma) per level, sigma back-calculated from the pass rate"}
    s.settings = {"confidence": doc.get("config", {}).get("confidence")}
    s.figures = _figs(run, "fit/pass_rate_fit.png", "fit/sigma_vs_iref.png")
    s.caption = "Probit back-calculation (the seed's) and the direct trip-point estimate, with confidence intervals."
    s.status = "ok"
    return s


def adc_validation(run: Path) -> Section:
    s = Section("adc_output", "ADC output distributions with sampled offsets; validation against full-ADC SPICE",
                "seed 001 Fig. 4", how="cimcosim chips --run-dir DIR")
    doc = _json(run / "chips/validation.json")
    if doc is None:
        return s
    rows = []
    chosen = doc.get("model", "paper")
    for key, models in doc.get("models", {k: {chosen: v} for k, v in doc["designs"].items()}).items():
        for model, v in models.items():
            if "mean_tv" not in v:
                continue
            if model == chosen:
                s.numbers[key] = {"model": model, "mean_tv": v["mean_tv"], "tv_floor": v["tv_noise_floor"],
                                  "spice_chips": v["n_spice_chips"], "spice_set": v.get("spice_set", "in_sample")}
            rows.append({"design": key, "chip model": model + (" (table)" if model == chosen else ""),
                         "mean TV": v["mean_tv"], "TV an exact table shows": v["tv_noise_floor"],
                         "95% up to": v["tv_noise_p95"], "<= 0.05": v.get("within_goal", v["mean_tv"] <= 0.05),
                         "SPICE chips": v["n_spice_chips"], "SPICE set": v.get("spice_set", "in_sample")})
    s.tables = [_md_table(pd.DataFrame(rows))]
    s.figures = _figs(run, "characterize/adc_codes.png", "chips/validation.png", "characterize/sar_offset_corr.png")
    s.caption = ("Codes of 5-bit Flash and SAR ADCs with offsets drawn per chip (one static pattern per chip) by "
                 "each chip model (paper: the seed's Gaussian model; empirical: measured samples and whole SAR "
                 "offset vectors; copula: a multivariate normal of those vectors) against full-ADC SPICE "
                 "(held-out validation chips where characterize made them); total-variation distance beside "
                 "the distance an exact table would show with this many SPICE chips. The last figure is the "
                 "correlation of one SAR SA's offsets between references.")
    s.seed_numbers = {"flash": "offsets independent per comparator", "sar": "one comparator: all levels shift together"}
    s.status = "ok"
    return s


def finetune_section(run: Path, tag: str | None) -> Section:
    s = Section("finetune", "Finetune each chip: forward on the chip, backward in float", "seed 001 Fig. 5 and "
                "Table 1's accuracy columns", how="cimcosim finetune --run-dir DIR --tag TAG --adc A --wl R")
    if tag is None:
        return s
    rows = []
    for p in sorted((run / "finetune" / tag).glob("*/results.parquet")):
        df = _read(p)
        if df is None:
            continue
        key = p.parent.name
        row = {"design": key, "chips": len(df), "offset rms (LSB)": float(df.offset_lsb_rms.mean()),
               "software": float(df.acc_software.iloc[0]), "before": float(df.acc_chip_before.mean()),
               "BN-only control": float(df.acc_chip_bn_only.mean()), "after": float(df.acc_chip_after.mean()),
               "model1 (digital)": float(df.acc_model1_digital.mean()), "iterations": int(df.iterations.iloc[0]),
               "test images": int(df.n_eval.iloc[0])}
        rows.append(row)
        s.numbers[key] = {k: v for k, v in row.items() if k != "design"}
    if not rows:
        return s
    s.tables = [_md_table(pd.DataFrame(rows))]
    s.figures = _figs(run, f"finetune/{tag}/curves.png", f"finetune/{tag}/accuracy_hist.png")
    s.seed_numbers = {"VGG-8 retrained accuracy": "SAR W/L 9: 89.39%, SAR 10: 90.87%, Flash 9: 91.36%, Flash 10: "
                      "91.46% (software ~92%)", "trend": "Flash drops less and recovers more easily than SAR"}
    s.caption = (f"model0 = {tag}; accuracy is the mean over the finetuned chips. The BatchNorm-only control "
                 "re-estimates BatchNorm on the chip without any weight update: what finetune adds beyond it is "
                 "the weights' own adaptation.")
    s.status = "ok"
    return s


def attack_sections(run: Path, tag: str | None) -> list[Section]:
    out = []
    base = Section("attack_table1", "C&W attack cases across chips (Table 1)", "seed 001 Table 1 and Table 2",
                   how="cimcosim attack --run-dir DIR --tag TAG --adc A --wl R --attack cw-l2")
    if tag is None or not (run / "attack" / tag).is_dir():
        return [base]
    for design in sorted(p for p in (run / "attack" / tag).iterdir() if p.is_dir()):
        for folder in sorted(p for p in design.iterdir() if p.is_dir()):
            t1 = folder / "table1.md"
            if not t1.is_file():
                continue
            df = _read(folder / "results.parquet")
            s = Section(f"attack_{design.name}_{folder.name}", f"{folder.name}: attack cases, {design.name}",
                        "seed 001 Table 1 (C&W L2) / Table 2 (L0, L2, Linf)", status="ok")
            s.tables = [t1.read_text()]
            s.figures = _figs(run, str((folder / "transfer.png").relative_to(run)))
            if df is not None:
                for case in ("white-box", "case 1", "case 2", "case 3"):
                    sel = df[df.case == case]
                    if len(sel):
                        s.numbers[case] = {"acc_after": float(sel.acc_after.iloc[0]), "source": sel.source.iloc[0]}
            s.seed_numbers = {"VGG-8 case 1 on chip1": "73.95-75.12%", "case 3 on chip1": "62.10-65.10%",
                              "software attack on model0": "0.61%"}
            s.caption = ("Accuracy of the target chip (the seed's chip 1) on examples made on each source; the "
                         "controls (software-to-software, offsets only, nominal chip, adaptive EOT) tell whether low "
                         "transfer is the chips' doing or the attack's.")
            out.append(s)
        t2 = design / "table2.md"
        if t2.is_file():
            out.append(Section(f"attack_{design.name}_norms", f"C&W norms, {design.name}", "seed 001 Table 2",
                               status="ok", tables=[t2.read_text()]))
    return out or [base]


def noise_study_sections(run: Path) -> list[Section]:
    d = run / "study_noise"
    how = "cimcosim study-noise --run-dir DIR"
    df = _read(d / "results.parquet")
    if df is None:
        return [Section("noise_table2", "IMC noise and partial-sum quantization as a defence", "seed 000 Table II, "
                        "Figs. 3-6", how=how)]
    t2 = Section("noise_table2", "Clean and black-box PGD accuracy per noise level", "seed 000 Table II",
                 status="ok", tables=[(d / "table2.md").read_text()] if (d / "table2.md").is_file() else [])
    base = df[(df.psq == "none") & (df.bits == df.bits.min())]
    for (noise, adv), g in base.groupby(["noise", "adv_train"]):
        worst = float(g.worst_acc.mean()) if "worst_acc" in g else float("nan")  # results from before the column
        t2.numbers[f"noise {noise}{' adv' if adv else ''}"] = {"clean": float(g.clean_acc.mean()),
                                                               "bb_pgd": float(g.bb_pgd_acc.mean()),
                                                               "wb_pgd": float(g.wb_pgd_acc.mean()), "worst": worst}
    t2.seed_numbers = {"binary ResNet-18, no noise": "clean 89.86%, BB 24.20%; adv. trained 86.33% / 34.54%",
                       "XNOR-SRAM 1.0V noise": "clean 87.19%, BB 30.12%; adv. trained 83.46% / 38.63%"}
    t2.caption = ("White-box PGD (EOT over the noise, straight-through gradients through the ADC) beside the "
                  "black-box column: a gain that the white-box column does not show is gradient obfuscation; "
                  "'worst of both' counts an image only if it survives both attacks.")
    out = [t2]
    for n, title, seed in (("fig3", "Noise-aware training, clean and adversarial", "seed 000 Fig. 3"),
                           ("fig4", "Ideal vs noisy 3.5-bit PSQ in adversarial training", "seed 000 Fig. 4"),
                           ("fig5", "Input splitting x noise", "seed 000 Fig. 5"),
                           ("fig6", "BFA flips to random guess", "seed 000 Fig. 6")):
        tab = _read(d / f"{n}.parquet")
        s = Section(f"noise_{n}", title, seed, status="not in this grid", how=how)
        if tab is not None and len(tab):
            s.status, s.figures = "ok", _figs(run, f"study_noise/{n}.png")
            metric = "bfa_flips" if n == "fig6" else "bb_pgd_acc"
            sel = tab[tab.metric == metric]
            s.numbers = {f"{r.series}, {r.bits}-bit": {"mean": r["mean"], "std": r["std"], "n": int(r.n)}
                         for _, r in sel.iterrows()}
            s.tables = [_md_table(sel[["series", "bits", "mean", "std", "n"]])]
        s.seed_numbers = {"claim": SEED_000_CLAIMS[n]}
        out.append(s)
    return out


SEED_000_CLAIMS = {"fig3": "noise-aware training: up to ~10% higher BB PGD accuracy",
                   "fig4": "noisy 3.5-bit PSQ: up to 7% higher BB accuracy under adversarial training",
                   "fig5": "input splitting + noise: +4.8 / +4.3 / +5.7 points (1/2/4-bit)",
                   "fig6": "IMC noise alone: fewer flips; binary input split: >30% more flips"}


def bfa_sections(run: Path) -> list[Section]:
    out = []
    for p in sorted((run / "bfa").glob("*/results.parquet")):
        if p.parent.name.startswith("sn_"):
            continue  # the noise study's cells are in its Fig. 6
        df = _read(p)
        if df is None:
            continue
        s = Section(f"bfa_{p.parent.name}", f"Bit-flip attack on {p.parent.name}", "seed 000 Sec. IV (BFA)",
                    status="ok", figures=_figs(run, f"bfa/{p.parent.name}/bfa.png"))
        for method, g in df.groupby("method"):
            s.numbers[method] = {"flips": float(g.flips.mean()), "acc_after": float(g.acc_after.mean()),
                                 "reached": int(g.reached.sum()), "runs": len(g)}
        s.tables = [_md_table(df[["run", "method", "flips", "acc_before", "acc_after", "reached"]])]
        out.append(s)
    return out


def _train_tag(run: Path) -> str | None:
    cfg = run / "config.toml"
    if cfg.is_file():
        import tomllib

        t = tomllib.loads(cfg.read_text()).get("train", {})
        return t.get("tag") or t.get("model")
    tags = sorted(p.name for p in (run / "finetune").glob("*") if p.is_dir())
    return tags[0] if tags else None


def report(run_dir: Path) -> dict[str, Any]:
    """Write ``report/index.html``, ``report/report.md`` and ``report/summary.json``; returns a summary."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ArtifactError(f"{run} is not a run folder; run `cimcosim run --run-dir {run}` first")
    tag = _train_tag(run)
    sections = [sa_pass_rate(run), sigma_fit(run), adc_validation(run), finetune_section(run, tag),
                *attack_sections(run, tag), *noise_study_sections(run), *bfa_sections(run)]
    out = run / "report"
    fig_dir = out / "fig"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    fig_dir.mkdir(parents=True)
    for s in sections:
        local = []
        for rel in s.figures:
            name = rel.replace("/", "__")
            shutil.copy2(run / rel, fig_dir / name)
            local.append(f"fig/{name}")
        s.figures = local
    manifest = _json(run / "manifest.json") or {}
    done = manifest.get("stages", {})
    order = [k for k in STAGE_NAMES if k in done]
    stages = {k: {"status": "this report" if k == "report" else done[k].get("status"),
                  "seconds": done[k].get("seconds"), "summary": done[k].get("summary")} for k in order}
    summary = {"run_dir": str(run), "generated": time.strftime("%Y-%m-%dT%H:%M:%S"), "train_tag": tag,
               "stages": stages, "sections": [s.__dict__ for s in sections]}
    write_json(out / "summary.json", summary)
    md = to_markdown(summary)
    (out / "report.md").write_text(md)
    (out / "index.html").write_text(to_html(summary))
    return {"sections": sum(s.status == "ok" for s in sections), "path": out / "index.html"}


def to_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# cimcosim report: {summary['run_dir']}", "", f"Generated {summary['generated']}.", ""]
    if summary["stages"]:
        lines += ["| stage | status | seconds | summary |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['status']} | {v['seconds']} | {v['summary'] or ''} |"
                  for k, v in summary["stages"].items()]
        lines.append("")
    for s in summary["sections"]:
        lines += [f"## {s['title']}", "", f"*Reproduces {s['seed']}.*", ""]
        if s["status"] != "ok":
            lines += [f"**{s['status']}**" + (f": `{s['how']}`" if s["how"] else ""), ""]
            continue
        if s["caption"]:
            lines += [s["caption"], ""]
        lines += [f"![{s['id']}]({f})" for f in s["figures"]] + ([""] if s["figures"] else [])
        for t in s["tables"]:
            lines += [t.strip(), ""]
        if s["numbers"]:
            lines += ["This run: `" + json.dumps(rounded(s["numbers"])) + "`", ""]
        if s["seed_numbers"]:
            lines += ["Seed: " + "; ".join(f"{k}: {v}" for k, v in s["seed_numbers"].items()), ""]
        if s["settings"]:
            lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in s["settings"].items()), ""]
    return "\n".join(lines) + "\n"


def rounded(v: Any) -> Any:
    """``v`` with every float rounded to 4 digits (for reading, not for scripts)."""
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [rounded(x) for x in v]
    return round(v, 4) if isinstance(v, float) else v
