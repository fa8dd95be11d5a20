#!/usr/bin/env python3
"""Writes summary.md and summary.json for launch/gpu/check.sh from its results.tsv (step, status, seconds,
reason), facts.env (key=value lines in bash %q quoting), each step's notes (logs/STEP.notes: one line per
sub-check, starting PASS/FAIL/SKIP or plain information), bench.jsonl and the scaling JSON files, with the
issue's targets beside the figures. `summary.py --compare REF.json CM.json` prints the reference comparison
line of one precision. Standard library only."""
import argparse
import json
import os
import shlex
import sys


def read_facts(path):
    facts = {}
    if not os.path.exists(path):
        return facts
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" not in line:
                continue
            key, val = line.split("=", 1)
            try:
                parts = shlex.split(val)
                facts[key] = parts[0] if parts else ""
            except ValueError:
                facts[key] = val
    return facts


def read_results(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            rows.append({"step": parts[0], "status": parts[1], "seconds": int(parts[2] or 0),
                         "reason": parts[3] if len(parts) > 3 else ""})
    return rows


def read_notes(logs, step):
    path = os.path.join(logs, step + ".notes")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def log_tail(logs, step, lines=15):
    path = os.path.join(logs, step + ".log")
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        return [l.rstrip("\n") for l in f.readlines()[-lines:]]


def bench_table(out):
    path = os.path.join(out, "bench.jsonl")
    if not os.path.exists(path):
        return [], []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    md = ["| recipe | precision | layout | batch/GPU | step s | images/s | TFLOP/s | % of dense peak | peak GB |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        frac = r.get("peak_fraction", -1)
        layout = {True: "NHWC", False: "NCHW"}.get(r.get("channels_last"), "-")
        md.append("| {} | {} | {} | {} | {:.4f} | {:.1f} | {} | {} | {} |".format(
            r.get("recipe", "?"), r.get("precision", "?"), layout, r.get("batch_per_rank", "?"), r.get("step_s", 0),
            r.get("images_per_s_rank", 0),
            "%.1f" % r["tflops_rank"] if "tflops_rank" in r else "-",
            "%.1f" % (100 * frac) if frac is not None and frac >= 0 else "-",
            "%.2f" % r["peak_memory_gb"] if r.get("peak_memory_gb", -1) >= 0 else "-"))
    return rows, md


def compare(ref_path, cm_path):
    """One line: the reference's figures and, when cm's run at that precision exists, the ratio."""
    ref = json.load(open(ref_path))
    s = "%.1f images/s, step %.4f s, %.2f GB peak" % (ref["images_per_s_rank"], ref["step_s"], ref.get("peak_memory_gb", -1))
    if os.path.exists(cm_path):
        cm = json.load(open(cm_path))
        s += "; cm imagenet64_ct %.1f images/s = %.2fx the reference [target >= 1.3x]" % (
            cm["images_per_s_rank"], cm["images_per_s_rank"] / ref["images_per_s_rank"])
    return s


def targets(bench_rows, work):
    """The issue's targets against what was measured (each: what was reached, not only whether)."""
    lines = []
    # The runs as the recipes take them (train.channels_last = auto); the NCHW comparison row is left out.
    by = {(r.get("recipe"), r.get("precision")): r for r in bench_rows if r.get("channels_last") is not False}
    ct = by.get(("cifar10_ct", "bf16"))
    if ct:
        frac = ct.get("peak_fraction", -1)
        lines.append("- NCSN++ CT (cifar10_ct) bf16: %s of the dense bf16 peak, %.0f images/s per GPU [target >= 40 %%, ~2,300 images/s]"
                     % ("%.1f %%" % (100 * frac) if frac >= 0 else "unknown fraction", ct["images_per_s_rank"]))
    for p in ("fp16", "fp32"):
        ref, cm = by.get(("reference:imagenet64_ct", p)), by.get(("imagenet64_ct", p))
        if ref and cm:
            lines.append("- imagenet64_ct %s: cm %.1f images/s, reference %.1f = %.2fx [target >= 1.3x]"
                         % (p, cm["images_per_s_rank"], ref["images_per_s_rank"], cm["images_per_s_rank"] / ref["images_per_s_rank"]))
    for name in sorted(os.listdir(work)) if work and os.path.isdir(work) else []:
        if name.startswith("scaling-") and name.endswith(".json"):
            try:
                j = json.load(open(os.path.join(work, name)))
            except ValueError:
                continue
            last = j["rows"][-1]
            lines.append("- %s projected to %d GPUs: %.1f %% scaling efficiency (step %.1f ms of which %.1f ms exposed "
                         "communication, overlap %.0f %%) [target >= 90 %%]"
                         % (j["recipe"], last["gpus"], 100 * last["efficiency"], 1e3 * last["step_s"], 1e3 * last["exposed_s"],
                            100 * j["overlap"]))
    return lines


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        print(compare(sys.argv[2], sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--facts", required=True)
    ap.add_argument("--logs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="")
    ap.add_argument("--dry-run", default="0")
    ap.add_argument("--elapsed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=0)
    a = ap.parse_args()

    facts = read_facts(a.facts)
    rows = read_results(a.results)
    for r in rows:
        r["notes"] = read_notes(a.logs, r["step"])
    failed = [r for r in rows if r["status"] == "FAIL"]
    verdict = "FAIL" if failed else ("PASS" if rows else "FAIL")
    dry = a.dry_run == "1"
    bench_rows, bench_md = bench_table(a.out)

    md = ["# cm GPU check%s: %s" % (" (dry run, CPU)" if dry else "", verdict), ""]
    md.append("- machine: %s, %s cores; GPU: %s x %s, driver %s" % (
        facts.get("HOSTNAME", "?"), facts.get("CORES", "?"), facts.get("GPU_NAME") or "none",
        facts.get("GPU_COUNT", "0"), facts.get("GPU_DRIVER") or "none"))
    md.append("- torch %s (CUDA %s, C++11 ABI %s); nvcc: %s; c++: %s" % (
        facts.get("TORCH_VERSION", "?"), facts.get("TORCH_CUDA") or "none", facts.get("TORCH_ABI", "?"),
        facts.get("NVCC_VERSION") or "none", facts.get("CXX_VERSION") or "?"))
    md.append("- elapsed %d s of a %d s budget" % (a.elapsed, a.budget))
    md.append("")
    md.append("| step | result | seconds | note |")
    md.append("|---|---|---|---|")
    for r in rows:
        md.append("| %s | %s | %d | %s |" % (r["step"], r["status"], r["seconds"], r["reason"]))
    md.append("")
    for r in rows:
        md.append("%s %s (%d s)%s" % (r["status"], r["step"], r["seconds"], (" - " + r["reason"]) if r["reason"] else ""))
        for n in r["notes"]:
            md.append("    " + n)
    if bench_md:
        md += ["", "## Step benchmarks", ""] + bench_md
    goal = targets(bench_rows, a.work)
    if goal:
        md += ["", "## Targets", ""] + goal
    for r in failed:
        md += ["", "## %s: last lines of logs/%s.log" % (r["step"], r["step"]), "", "```"] + log_tail(a.logs, r["step"]) + ["```"]
    md.append("")

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write("\n".join(md))
    summary = {"verdict": verdict, "dry_run": dry, "elapsed_s": a.elapsed, "budget_s": a.budget, "facts": facts,
               "steps": rows, "bench": bench_rows}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
