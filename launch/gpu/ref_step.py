#!/usr/bin/env python3
"""Times the reference implementation's consistency-training step (openai/consistency_models, PyTorch) on one
GPU, for launch/gpu/check.sh to set beside `cm bench step imagenet64_ct`:

    python3 launch/gpu/ref_step.py --reference launch/gpu/carry/consistency_models --precision fp16 \
        --batch 32 --steps 5 --warmup 2 --json ref.json
    python3 launch/gpu/ref_step.py --reference DIR --write-teacher teacher.safetensors

REF is a checkout (or `git archive`) of https://github.com/openai/consistency_models holding its cm/ package;
nothing of it is copied into this repository: this script imports it and runs it.

What runs: the reference's own CMTrainLoop.run_step (forward_backward with consistency_losses, the
MixedPrecisionTrainer's optimize with RAdam, the sampling EMAs and the target EMA), built as its
scripts/cm_train.py builds it for the ImageNet-64 CT run of scripts/launch.sh (ADM 192 channels, 3 blocks,
attention at 32,16,8 with 64 channels per head, scale-shift norm, resblock up/down, 1000 classes; LPIPS
metric; target EMA "adaptive" from 0.95, scales "progressive" 2 -> 200; EMAs 0.999, 0.9999, 0.9999432; lr 1e-4),
wrapped in DDP as the reference does, in a torch.distributed world of one (NCCL). --precision fp16 is its
--use_fp16 True (fp16 network copy, fp32 master weights, dynamic loss scaling), fp32 is --use_fp16 False,
where the reference's target-EMA update fails (it pairs flattened target copies with per-tensor parameters,
which match only in fp16); in fp32 that one update is done per tensor here, the same arithmetic.
Random images in [-1, 1] and random labels, made once on the CPU (pinned), as cm's --synthetic.

Stand-ins for what the machine lacks or cannot fetch (imports the reference needs, none changes the work):
  flash_attn.flash_attention.FlashAttention -> torch's scaled_dot_product_attention on the same
      (batch, seq, 3, heads, head_dim) layout (on an H100/H200 in fp16 that is a flash-attention kernel too);
  piq.LPIPS(replace_pooling=True, reduction="none") -> VGG16's convolutions (random weights) with average
      pooling, unit-normalised features of its 5 stages, random non-negative 1x1 weights, spatial means summed:
      the same shapes and FLOPs as piq's, meaningless values (cm's --synthetic LPIPS is random as well);
  blobfile, mpi4py -> minimal modules (no checkpoints are read or written; a world of one).
--write-teacher PATH writes a randomly initialised ImageNet-64 ADM of the reference (the CD teacher's
architecture) as safetensors, for `cm bench step imagenet64_cd_lpips method.teacher=PATH`.
"""
import argparse
import json
import os
import socket
import sys
import time
import types


def install_stubs():
    import torch as th
    import torch.nn as nn
    import torch.nn.functional as F

    # blobfile: only names used at import time and by the (unused) checkpoint paths.
    bf = types.ModuleType("blobfile")
    bf.BlobFile = open
    bf.exists = os.path.exists
    bf.join = os.path.join
    bf.dirname = os.path.dirname
    bf.listdir = os.listdir
    sys.modules["blobfile"] = bf

    # mpi4py: a world of one.
    class _Comm:
        rank = 0
        size = 1

        def Get_rank(self):
            return 0

        def Get_size(self):
            return 1

        def bcast(self, obj, root=0):
            return obj

        def allreduce(self, x, op=None):
            return x

        def Barrier(self):
            pass

    mpi = types.ModuleType("mpi4py.MPI")
    mpi.COMM_WORLD = _Comm()
    mpi.SUM = "sum"
    pkg = types.ModuleType("mpi4py")
    pkg.MPI = mpi
    sys.modules["mpi4py"] = pkg
    sys.modules["mpi4py.MPI"] = mpi

    # flash_attn: exact attention through torch's fused kernels.
    class FlashAttention(nn.Module):
        def __init__(self, attention_dropout=0.0, **kwargs):
            super().__init__()
            self.dropout = attention_dropout

        def forward(self, qkv, key_padding_mask=None, need_weights=False, causal=False):
            q, k, v = qkv.unbind(dim=2)  # each [b, s, h, d]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.0
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                                     is_causal=causal)
            else:
                w = th.softmax((q @ k.transpose(-1, -2)).float() / q.shape[-1] ** 0.5, dim=-1).to(v.dtype)
                out = w @ v
            return out.transpose(1, 2), None

    fa = types.ModuleType("flash_attn")
    fam = types.ModuleType("flash_attn.flash_attention")
    fam.FlashAttention = FlashAttention
    fa.flash_attention = fam
    sys.modules["flash_attn"] = fa
    sys.modules["flash_attn.flash_attention"] = fam

    # einops (on the GPU machine; a stand-in elsewhere): the two patterns of the reference's attention.
    try:
        import einops  # noqa: F401
    except ImportError:
        def rearrange(t, pattern, three=None, h=None):
            if pattern == "b (three h d) s -> b s three h d":
                b, c, n = t.shape
                return t.reshape(b, three, h, c // (three * h), n).permute(0, 4, 1, 2, 3)
            if pattern == "b s h d -> b (h d) s":
                b, n, hh, d = t.shape
                return t.permute(0, 2, 3, 1).reshape(b, hh * d, n)
            raise ValueError("rearrange stand-in: pattern %r" % pattern)

        ein = types.ModuleType("einops")
        ein.rearrange = rearrange
        sys.modules["einops"] = ein
    # torchvision: the reference imports RandomCrop (unused by the loss); a stand-in where it is missing.
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tvt = types.ModuleType("torchvision.transforms")
        tvt.RandomCrop = object
        tv.transforms = tvt
        sys.modules["torchvision"] = tv
        sys.modules["torchvision.transforms"] = tvt

    # scipy (on the GPU machine): resample.py imports scipy.stats.norm for a sampler CT does not use.
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        sp, sps = types.ModuleType("scipy"), types.ModuleType("scipy.stats")
        sps.norm = None
        sp.stats = sps
        sys.modules["scipy"], sys.modules["scipy.stats"] = sp, sps

    # piq: an LPIPS of the same shapes with random weights.
    class LPIPS(nn.Module):
        def __init__(self, replace_pooling=True, reduction="none", **kwargs):
            super().__init__()
            # VGG16's convolutional part (configuration "D"), 2x2 pooling (average with replace_pooling).
            layers, c_in = [], 3
            for v in [64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"]:
                if v == "P":
                    layers.append(nn.AvgPool2d(2, 2) if replace_pooling else nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
                    c_in = v
            cuts = [4, 9, 16, 23, 30]  # after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
            self.stages = nn.ModuleList(nn.Sequential(*layers[a:b]) for a, b in zip([0] + cuts[:-1], cuts))
            self.lins = nn.ParameterList(nn.Parameter(th.rand(1, c, 1, 1)) for c in (64, 128, 256, 512, 512))
            self.register_buffer("mean", th.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", th.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
            for p in self.parameters():
                p.requires_grad_(False)
            self.reduction = reduction

        def forward(self, x, y):
            self.to(x.device)
            h = th.cat([x, y]).float()
            h = (h - self.mean) / self.std
            total = 0
            for stage, w in zip(self.stages, self.lins):
                h = stage(h)
                f = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
                fx, fy = f.chunk(2)
                total = total + ((fx - fy) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
            return total if self.reduction == "none" else total.mean()

    piq = types.ModuleType("piq")
    piq.LPIPS = LPIPS
    sys.modules["piq"] = piq


IMAGENET64 = dict(attention_resolutions="32,16,8", class_cond=True, use_scale_shift_norm=True, dropout=0.0,
                  image_size=64, num_channels=192, num_head_channels=64, num_res_blocks=3, resblock_updown=True,
                  weight_schedule="uniform")


SMALL = dict(num_channels=32, num_head_channels=16, num_res_blocks=1, attention_resolutions="16")  # --small: tests

# --config cpu32: the CPU comparison of the precision issue (README "The training step against the reference"):
# ADM 64 channels, 2 blocks, multipliers 1,2,2, attention at 16 and 8 with 32 channels per head, scale-shift
# norm, residual up/down, unconditional, dropout 0, 32x32x3, CT with l2, RAdam 4e-4, a target EMA.
CPU32 = dict(image_size=32, num_channels=64, num_res_blocks=2, channel_mult="1,2,2", attention_resolutions="16,8",
             num_head_channels=32, class_cond=False, use_scale_shift_norm=True, resblock_updown=True, dropout=0.0)


def model_kwargs(script_util, use_fp16, distillation, small=False, config="imagenet64"):
    kw = script_util.model_and_diffusion_defaults()
    kw.update(IMAGENET64)
    if small:
        kw.update(SMALL)
    if config == "cpu32":
        kw.update(CPU32)
    kw["use_fp16"] = use_fp16
    kw["distillation"] = distillation
    return kw


def init_world(backend):
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    dist.init_process_group(backend=backend, init_method="env://")


def write_teacher(path):
    import torch as th
    from cm import script_util
    model, _ = script_util.create_model_and_diffusion(**model_kwargs(script_util, False, False))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, path)
    else:
        th.save(sd, path)
    n = sum(v.numel() for v in sd.values())
    print("wrote %s: %d tensors, %d parameters (random ImageNet-64 ADM of the reference)" % (path, len(sd), n))


def bench(args):
    import torch as th
    from cm import logger, script_util
    from cm.train_util import CMTrainLoop

    use_fp16 = args.precision == "fp16"
    cuda = args.device == "cuda"
    if not cuda:
        th.cuda.is_available = lambda: False  # the reference picks its device (and DDP) from this
    init_world("nccl" if cuda else "gloo")
    logger.configure(dir=args.logdir, format_strs=["log"])
    dev = th.device(args.device)
    sync = th.cuda.synchronize if cuda else (lambda: None)
    kw = model_kwargs(script_util, use_fp16, True, args.small, args.config)
    model, diffusion = script_util.create_model_and_diffusion(**kw)
    cpu32 = args.config == "cpu32"
    if cpu32:
        diffusion.loss_norm = "l2"
    model.to(dev)
    model.train()
    if use_fp16:
        model.convert_to_fp16()
    target, _ = script_util.create_model_and_diffusion(**kw)
    target.to(dev)
    target.train()
    for dst, src in zip(target.parameters(), model.parameters()):
        dst.data.copy_(src.data)
    if use_fp16:
        target.convert_to_fp16()
    ema_scale_fn = script_util.create_ema_and_scales_fn(
        target_ema_mode="adaptive", start_ema=0.95, scale_mode="progressive", start_scales=2, end_scales=200,
        total_steps=800000, distill_steps_per_iter=50000)
    loop = CMTrainLoop(model=model, target_model=target, teacher_model=None, teacher_diffusion=None,
                       training_mode="consistency_training", ema_scale_fn=ema_scale_fn, total_training_steps=800000,
                       diffusion=diffusion, data=None, batch_size=args.batch, microbatch=-1, lr=4e-4 if cpu32 else 1e-4,
                       ema_rate="0.9999" if cpu32 else "0.999,0.9999,0.9999432189950708", log_interval=10**9, save_interval=-1,
                       resume_checkpoint="", use_fp16=use_fp16, fp16_scale_growth=1e-3, schedule_sampler=None,
                       weight_decay=0.0, lr_anneal_steps=0)
    if not use_fp16:
        # The reference's target EMA zips the target's flattened master copies with the model's per-tensor
        # parameters, which only match under --use_fp16 True (fp32 CT fails there with a size mismatch):
        # here the same EMA is taken per tensor.
        from cm.nn import update_ema

        def update_target_ema():
            rate, _ = loop.ema_scale_fn(loop.global_step)
            with th.no_grad():
                update_ema(list(loop.target_model.parameters()), loop.mp_trainer.master_params, rate=rate)

        loop._update_target_ema = update_target_ema
    gen = th.Generator().manual_seed(1234)
    res = kw["image_size"]
    batch = th.rand(args.batch, 3, res, res, generator=gen) * 2 - 1
    cond = {} if cpu32 else {"y": th.randint(1000, (args.batch,), generator=gen)}
    if cuda:
        batch, cond = batch.pin_memory(), {k: v.pin_memory() for k, v in cond.items()}
    times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        loop.run_step(batch, cond)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    mean = sum(times) / len(times)
    peak = th.cuda.max_memory_allocated() / 1e9 if cuda else -1.0
    out = {"recipe": "reference:" + ("cpu32_ct" if cpu32 else "imagenet64_ct") + ("(small)" if args.small else ""), "precision": args.precision,
           "device": "cuda:0" if cuda else "cpu", "gpu": th.cuda.get_device_name(0) if cuda else "", "ranks": 1, "batch_per_rank": args.batch, "step_s": mean,
           "step_s_min": min(times), "images_per_s_rank": args.batch / mean, "images_per_s_job": args.batch / mean,
           "peak_memory_gb": peak, "torch": th.__version__,
           "parameters": sum(p.numel() for p in model.parameters())}
    print("reference CT step, %s ADM, %s, batch %d: %.4f s mean (min %.4f), %.1f images/s, peak %.2f GB"
          % ("32px CPU-comparison" if cpu32 else "ImageNet-64", args.precision, args.batch, mean, min(times), args.batch / mean, peak))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="directory holding the reference's cm/ package")
    ap.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", default="")
    ap.add_argument("--logdir", default="/tmp/cm-reference-log")
    ap.add_argument("--write-teacher", default="", help="write a random teacher (.safetensors, else torch.save) and exit")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a test of this script, not a timing")
    ap.add_argument("--small", action="store_true", help="a small ADM (tests of this script)")
    ap.add_argument("--config", choices=["imagenet64", "cpu32"], default="imagenet64",
                    help="cpu32: the 32x32 unconditional ADM of the CPU step comparison (l2, lr 4e-4)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(args.reference, "cm")):
        sys.exit("ref_step: no cm/ package in %s" % args.reference)
    sys.path.insert(0, os.path.abspath(args.reference))
    install_stubs()
    if args.threads > 0:
        import torch as th
        th.set_num_threads(args.threads)
    if args.write_teacher:
        write_teacher(args.write_teacher)
    else:
        bench(args)


if __name__ == "__main__":
    main()
