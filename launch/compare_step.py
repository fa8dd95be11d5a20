#!/usr/bin/env python3
"""The reference implementation's consistency-training step against `cm bench step`, side by side.

    /usr/bin/python3 launch/compare_step.py --reference CHECKOUT [--rounds 4] [--steps 4] [--warmup 1] [--threads 2]
        [--cm build/cm] [--cm-precision fp32] [--breakdown] [--json FILE]

CHECKOUT holds openai/consistency_models (its cm/ package); nothing of it is copied here: launch/gpu/ref_step.py
imports it and times its own CMTrainLoop.run_step (KarrasDenoiser.consistency_losses, create_model,
create_ema_and_scales_fn, RAdam through its MixedPrecisionTrainer, update_ema for the target and the sampling EMA).
The network is the precision issue's CPU comparison network on both sides: ADM with 64 channels, 2 res blocks,
channel_mult 1,2,2, attention at 16 and 8 with 32 channels per head, scale-shift norm, residual up/down,
unconditional, dropout 0; batch 16 at 32x32x3; CT with l2; RAdam 4e-4; a target EMA and one sampling EMA
(0.9999); both on the same number of threads (--threads, default 2). The reference runs with Debian's
python3-torch (LibTorch 1.13, the same kernels cm links).

The two run in turn, reference then cm, --rounds times (A B A B ...: these machines are shared and their
speed drifts, so each round's ratio compares neighbours), each a fresh process with --warmup untimed steps
and --steps timed ones. Printed: every round's seconds per step and ratio (reference / cm, > 1 means cm is
faster), the median ratio, and with --breakdown cm's own breakdown of its step (`cm bench step --breakdown`:
convolutions, norms and activations, attention, optimizer and EMAs, data, against a lone convolution's rate).
--cm-precision bf16 times cm in bf16 instead (the reference has no CPU bf16: not like for like, said so).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# cm's side of the same network and step (recipes/configs/cifar10_ct.toml with the CPU comparison's overrides).
CM_OVERRIDES = ["model=adm_small", "model.model_channels=64", "model.num_res_blocks=2", "model.attention_resolutions=[16,8]",
                "model.num_head_channels=32", "model.class_cond=false", "model.dropout=0", "method.metric=l2",
                "train.lr=4e-4", "train.ema_rates=[0.9999]"]


def run(cmd, env, what):
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.exit("compare_step: %s failed (exit %d):\n%s\n%s" % (what, p.returncode, " ".join(cmd), p.stdout[-3000:]))
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="a checkout of openai/consistency_models (its cm/ package)")
    ap.add_argument("--cm", default=os.path.join(ROOT, "build", "cm"), help="the cm program (default build/cm)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cm-precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--cm-extra", default="", help="more cm overrides, space-separated (e.g. train.lanes=1)")
    ap.add_argument("--breakdown", action="store_true", help="also print cm's breakdown of its step (one more cm run)")
    ap.add_argument("--json", default="", help="write the rounds and the median ratio here")
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(args.reference, "cm")):
        sys.exit("compare_step: no cm/ package in %s (a checkout of openai/consistency_models)" % args.reference)
    if not os.access(args.cm, os.X_OK):
        sys.exit("compare_step: %s is not an executable cm (build it first: bash launch/setup.sh)" % args.cm)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        sys.exit("compare_step: --rounds, --steps, --threads must be >= 1 and --warmup >= 0")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    tmp = tempfile.mkdtemp(prefix="cm-compare-")
    ref_cmd = [sys.executable, os.path.join(HERE, "gpu", "ref_step.py"), "--reference", args.reference, "--device", "cpu",
               "--precision", "fp32", "--config", "cpu32", "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--logdir", os.path.join(tmp, "ref-log")]
    cm_cmd = [args.cm, "bench", "step", "cifar10_ct", "--synthetic", "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cm_cmd += CM_OVERRIDES + ["train.batch=%d" % args.batch, "train.threads=%d" % args.threads,
                              "train.precision=%s" % args.cm_precision] + args.cm_extra.split()
    print("reference: %s" % " ".join(ref_cmd))
    print("cm:        %s" % " ".join(cm_cmd))
    rounds = []
    for i in range(args.rounds):
        rj, cj = os.path.join(tmp, "ref%d.json" % i), os.path.join(tmp, "cm%d.json" % i)
        run(ref_cmd + ["--json", rj], env, "the reference step")
        out = run(cm_cmd + ["--json", cj], env, "cm bench step")
        with open(rj) as f:
            ref = json.load(f)
        with open(cj) as f:
            cm = json.load(f)
        r = {"reference_step_s": ref["step_s"], "cm_step_s": cm["step_s"], "ratio": ref["step_s"] / cm["step_s"],
             "reference_parameters": ref["parameters"], "cm_parameters": cm.get("parameters", 0), "cm_lanes": cm.get("lanes", 1), "cm_threads": cm.get("threads", 0)}
        rounds.append(r)
        print("round %d: reference %.3f s/step (%.2f images/s), cm %.3f s/step (%.2f images/s, lanes %d): ratio %.2f"
              % (i + 1, r["reference_step_s"], args.batch / r["reference_step_s"], r["cm_step_s"], args.batch / r["cm_step_s"],
                 r["cm_lanes"], r["ratio"]))
        sys.stdout.flush()
    ratios = [r["ratio"] for r in rounds]
    med = statistics.median(ratios)
    like = "like for like (fp32 both)" if args.cm_precision == "fp32" else "cm in bf16 against the reference in fp32: NOT like for like"
    print("median ratio %.2f (min %.2f, max %.2f) over %d rounds: cm's images/s / the reference's, %s, %d threads each"
          % (med, min(ratios), max(ratios), len(ratios), like, args.threads))
    print("parameters: reference %d, cm %d" % (rounds[0]["reference_parameters"], rounds[0]["cm_parameters"]))
    if rounds[0]["reference_parameters"] != rounds[0]["cm_parameters"]:
        print("WARNING: the two networks differ in size: the ratio compares different work")
    if args.breakdown:
        print(run(cm_cmd + ["--breakdown"], env, "cm bench step --breakdown"), end="")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "median_ratio": med, "threads": args.threads, "batch": args.batch,
                       "cm_precision": args.cm_precision, "steps": args.steps, "warmup": args.warmup}, f)
            f.write("\n")


if __name__ == "__main__":
    main()
