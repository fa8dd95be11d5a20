#!/usr/bin/env python3
"""Writes tests/fixtures/reference_equivalence/: the consistency losses, their parameter gradients and a few
whole training steps as openai/consistency_models computes them, for tests/test_reference_equivalence.cpp.

    /usr/bin/python3 tools/reference_equivalence.py /tmp/ref_cm [--out tests/fixtures/reference_equivalence]

REF is a checkout of https://github.com/openai/consistency_models (e.g. `git archive HEAD | tar -x`); nothing
of it is copied here: this script imports it and runs it (Debian's python3-torch, CPU, float32).

What is run, per case (all on one small class-conditional ADM UNet of the reference's cm/unet.py: image 8x8x3,
32 channels, channel_mult (1,), 1 res block, attention at 8 px with 16 channels per head, scale-shift norm,
resblock up/down, 10 classes, dropout 0):
  ct_l2, ct_l1   KarrasDenoiser(distillation=True, weight_schedule="uniform", loss_norm=l2|l1)
                 .consistency_losses(model, x, N, target_model=target, noise=z), no teacher (CT).
  cd_heun        the same with teacher_model=teacher, teacher_diffusion=KarrasDenoiser(distillation=False).
  cd_euler       the reference's consistency_losses always takes a Heun step when it has a teacher (its
                 euler_solver is reached only without one, i.e. CT). Euler is obtained from that same code path
                 by a teacher_diffusion whose second evaluation returns samples - t2 * d, d being the slope of
                 its first (real) evaluation, so the reference's (d + d')/2 is d: x_t2 = x_t + d (t2 - t).
  ict            the reference has no iCT. It is the reference's CT call (loss_norm="l2", target_model = the
                 model itself, which consistency_losses evaluates under no_grad = stopgrad(theta)) with two
                 module functions of cm/karras_diffusion.py replaced for the call: mean_flat of the squared
                 differences -> sqrt(sum + c^2) - c, c = 0.00054 sqrt(d) (iCT's pseudo-Huber, d = 3*8*8), and
                 get_weightings -> 1 / (t - t2) for the pair (iCT's lambda(t_n) = 1/(t_{n+1} - t_n)), t and t2
                 by the reference's own sigma formula for the injected indices.
  train          7 steps of CT as CMTrainLoop.run_step does them: consistency_losses(...)["loss"].mean()
                 backward, torch.optim.RAdam(lr, weight_decay 0) step, the sampling EMA (update_ema, rate 0.9)
                 and the target EMA with (mu, N) = create_ema_and_scales_fn("adaptive", mu0 0.9, "progressive",
                 s0 2, s1 10, K 8)(k) for step k. Target initialised from the model, as cm_train.py does.

Identical inputs on both sides: the noise z is passed through consistency_losses' `noise` argument; the pair
indices, which the reference draws with th.randint(0, N - 1, (B,)), are injected by replacing torch.randint for
the duration of the call with a function that checks those arguments and returns the fixture's indices. The
reference indexes its grid from sigma_max down (index i: t = t_{N-i} > t2), the project from sigma_min up;
the fixture stores the reference's indices. It also stores the sigmas t, t2 the reference evaluated its
student and target at (recorded by wrapping its denoise): the reference computes its grid in float32, the
project in float64, so they differ by an ulp, and 250 ln(t) feeds that ulp into the sinusoidal embedding's
highest-frequency terms (~1e-4 relative in the time-embedding gradients). The test checks that the grids agree
to float32 rounding and then compares losses and gradients at the reference's own sigmas.

Stubbed (not needed by the loss): blobfile, mpi4py, piq, torchvision (imports only), einops.rearrange (its two
patterns in cm/unet.py, as reshape/permute) and flash_attn's FlashAttention as exact float32 softmax
attention in the flash layout (qkv channels as (three, heads, head_dim)), which is the layout of the released
checkpoints and of the project's ADM.

Weights are not stored: every network's tensors are made from a counter-based hash (splitmix64 of seed, tensor
index in state-dict order, element index) -> 24-bit uniform u, value (u / 2^24 - 0.5) / 8, or 1 + (u/2^24 - 0.5)/4
for 1-D tensors named *weight (GroupNorm scales); exact in float64 and rounded once to float32, so the C++ test
makes the same bits. Seeds: student 1, target 2, teacher 3. Large tensors are stored as summaries to keep the
fixture small (see summarize()): 64 evenly spaced entries, the sum of squares and the dot product with a
hash-sign vector, per parameter tensor.
"""
import argparse
import contextlib
import json
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_np  # noqa: E402

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
IMAGE, CLASSES, BATCH = 8, 10, 4
SAMPLE_POINTS = 64


def splitmix64(x):
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_values(seed, k, name, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    i = np.arange(n, dtype=np.uint64)
    key = (np.uint64(seed) << np.uint64(48)) ^ (np.uint64(k) << np.uint64(32)) ^ i
    u = (splitmix64(key) >> np.uint64(40)).astype(np.float64) / float(1 << 24) - 0.5
    v = 1.0 + u / 4.0 if (len(shape) == 1 and name.endswith("weight")) else u / 8.0
    return v.astype(np.float32).reshape(shape)


def hash_signs(n):
    with np.errstate(over="ignore"):
        h = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return np.where((h >> np.uint64(63)) == 1, 1.0, -1.0)


def summarize(a):
    """[SAMPLE_POINTS entries at j*n//m (m = min(n, 64)), sum of squares, dot with hash_signs] in float64."""
    f = np.asarray(a, dtype=np.float64).reshape(-1)
    n = f.size
    m = min(n, SAMPLE_POINTS)
    pos = (np.arange(m, dtype=np.int64) * n) // m
    return np.concatenate([f[pos], [np.sum(f * f), np.sum(f * hash_signs(n))]])


def install_stubs():
    def stub(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    import torch as th

    def rearrange(x, pattern, **kw):
        if pattern == "b (three h d) s -> b s three h d":
            b, _, s = x.shape
            return x.reshape(b, 3, kw["h"], -1, s).permute(0, 4, 1, 2, 3)
        if pattern == "b s h d -> b (h d) s":
            b, s, h, d = x.shape
            return x.permute(0, 2, 3, 1).reshape(b, h * d, s)
        raise NotImplementedError(pattern)

    class FlashAttention(th.nn.Module):
        def __init__(self, attention_dropout=0.0, **kw):
            super().__init__()

        def forward(self, qkv, key_padding_mask=None, need_weights=False, causal=False):
            q, k, v = qkv.unbind(2)  # [b, s, heads, d]
            w = th.einsum("bshd,bthd->bhst", q, k) / q.shape[-1] ** 0.5
            return th.einsum("bhst,bthd->bshd", w.softmax(-1), v), None

    stub("blobfile")
    stub("mpi4py", MPI=None)
    stub("piq", LPIPS=None)
    stub("torchvision")
    stub("torchvision.transforms", RandomCrop=None)
    stub("einops", rearrange=rearrange)
    stub("flash_attn")
    stub("flash_attn.flash_attention", FlashAttention=FlashAttention)


@contextlib.contextmanager
def injected_indices(th, indices, num_scales):
    real = th.randint

    def fake(low, high, size, device=None, **kw):
        assert (low, high, tuple(size)) == (0, num_scales - 1, (len(indices),)), (low, high, size)
        return th.tensor(indices, dtype=th.int64, device=device)

    th.randint = fake
    try:
        yield
    finally:
        th.randint = real


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ref", help="checkout of openai/consistency_models")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "reference_equivalence"))
    args = ap.parse_args()
    install_stubs()
    sys.path.insert(0, os.path.abspath(args.ref))
    import torch as th
    from cm import karras_diffusion as kd
    from cm.nn import update_ema
    from cm.script_util import create_ema_and_scales_fn
    from cm.unet import UNetModel

    th.set_num_threads(1)
    th.manual_seed(0)

    def make_net(seed):
        net = UNetModel(image_size=IMAGE, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                        attention_resolutions=(1,), dropout=0.0, channel_mult=(1,), num_classes=CLASSES,
                        num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True)
        sd = net.state_dict()
        new = {n: th.from_numpy(hash_values(seed, k, n, tuple(t.shape))) for k, (n, t) in enumerate(sd.items())}
        net.load_state_dict(new)
        return net

    student, target, teacher = make_net(1), make_net(2), make_net(3)
    names = [n for n, _ in student.named_parameters()]
    assert names == list(student.state_dict().keys()), "parameters and state dict differ in order"

    rng = np.random.default_rng(20240601)
    out = {}
    meta = {"generator": "tools/reference_equivalence.py", "image": IMAGE, "classes": CLASSES, "batch": BATCH,
            "params": names, "cases": {}}

    def inputs(prefix, num_scales):
        x = rng.uniform(-1, 1, (BATCH, 3, IMAGE, IMAGE)).astype(np.float32)
        z = rng.standard_normal((BATCH, 3, IMAGE, IMAGE)).astype(np.float32)
        y = rng.integers(0, CLASSES, BATCH).astype(np.int64)
        # Cover both ends of the grid: index 0 (t = sigma_max) and N - 2 (t2 = sigma_min).
        idx = np.concatenate([[0, num_scales - 2], rng.integers(0, num_scales - 1, BATCH - 2)]).astype(np.int64)
        out[prefix + "x"], out[prefix + "z"], out[prefix + "y"], out[prefix + "idx"] = x, z, y, idx
        return th.from_numpy(x), th.from_numpy(z), th.from_numpy(y), idx.tolist()

    def summaries(prefix, tensors):
        for n, t in zip(names, tensors):
            out[f"{prefix}{n}"] = summarize(t.detach().numpy())

    for seed_name, net in (("student", student), ("target", target), ("teacher", teacher)):
        summaries(f"weights.{seed_name}/", net.parameters())

    sigma_min, sigma_max, rho = 0.002, 80.0, 7.0

    def ref_sigmas(idx, n):  # the reference's own expression (consistency_losses), for iCT's weighting
        i = th.tensor(idx, dtype=th.int64)
        a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        return (a + i / (n - 1) * (b - a)) ** rho, (a + (i + 1) / (n - 1) * (b - a)) ** rho

    class EulerTeacher:
        """teacher_diffusion for the Euler case: real first evaluation, second one gives slope d again."""

        def __init__(self, real):
            self.real, self.first = real, None

        def denoise(self, model, x, t, **kw):
            if self.first is None:
                mo, den = self.real.denoise(model, x, t, **kw)
                self.first = (x - den) / kd.append_dims(t, x.ndim)
                return mo, den
            d, self.first = self.first, None
            return None, x - d * kd.append_dims(t, x.ndim)

    cases = [("ct_l2", 6, "l2", None), ("ct_l1", 6, "l1", None), ("cd_heun", 6, "l2", "heun"),
             ("cd_euler", 6, "l2", "euler"), ("ict", 11, "ict", None)]
    for name, n, norm, solver in cases:
        x, z, y, idx = inputs(f"{name}/", n)
        diffusion = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=sigma_max, sigma_min=sigma_min, distillation=True,
                                      weight_schedule="uniform", loss_norm="l2" if norm == "ict" else norm)
        kwargs = dict(model_kwargs={"y": y}, noise=z, target_model=student if norm == "ict" else target)
        if solver:
            real = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=sigma_max, sigma_min=sigma_min, distillation=False,
                                     weight_schedule="uniform", loss_norm="l2")
            kwargs.update(teacher_model=teacher, teacher_diffusion=real if solver == "heun" else EulerTeacher(real))
        student.zero_grad()
        saved = (kd.mean_flat, kd.get_weightings)
        c = 0.00054 * np.sqrt(3 * IMAGE * IMAGE)
        if norm == "ict":
            t, t2 = ref_sigmas(idx, n)
            kd.mean_flat = lambda sq: th.sqrt(sq.sum(dim=list(range(1, sq.ndim))) + c * c) - c
            kd.get_weightings = lambda schedule, snrs, sd: 1.0 / (t - t2)
        seen = []  # the sigmas of every student/target evaluation, as the reference computed them
        real_denoise = diffusion.denoise
        diffusion.denoise = lambda model, x_t, sigmas, **kw: (seen.append(sigmas.detach().clone()), real_denoise(model, x_t, sigmas, **kw))[1]
        try:
            with injected_indices(th, idx, n):
                per_sample = diffusion.consistency_losses(student, x, n, **kwargs)["loss"]
        finally:
            kd.mean_flat, kd.get_weightings = saved
        assert len(seen) == 2
        out[f"{name}/t"], out[f"{name}/t2"] = seen[0].numpy(), seen[1].numpy()
        loss = per_sample.mean()
        loss.backward()
        out[f"{name}/per_sample"] = per_sample.detach().numpy().astype(np.float64)
        out[f"{name}/loss"] = np.array([loss.item()], dtype=np.float64)
        summaries(f"{name}/grad/", [p.grad for p in student.parameters()])
        meta["cases"][name] = {"num_scales": n, "metric": {"l2": "l2", "l1": "l1", "ict": "pseudo_huber"}[norm],
                               "solver": solver, "pseudo_huber_c": c if norm == "ict" else None,
                               "loss": loss.item()}
        print(f"{name}: N {n}, indices {idx}, loss {loss.item():.8g}")

    # Training steps (CT, curriculum, RAdam, target EMA mu(k), a sampling EMA).
    steps, lr, ema_rate = 7, 2e-3, 0.9
    model = make_net(1)
    tgt = make_net(1)
    for dst, src in zip(tgt.parameters(), model.parameters()):
        dst.data.copy_(src.data)
    ema = [p.detach().clone() for p in model.parameters()]
    opt = th.optim.RAdam(model.parameters(), lr=lr, weight_decay=0.0)
    fn = create_ema_and_scales_fn("adaptive", 0.9, "progressive", 2, 10, 8, None)
    diffusion = kd.KarrasDenoiser(sigma_data=0.5, sigma_max=sigma_max, sigma_min=sigma_min, distillation=True,
                                  weight_schedule="uniform", loss_norm="l2")
    sched = []
    for k in range(steps):
        mu, n = fn(k)
        x, z, y, idx = inputs(f"train/{k}/", n)
        opt.zero_grad()
        seen = []
        real_denoise = diffusion.denoise
        diffusion.denoise = lambda model, x_t, sigmas, **kw: (seen.append(sigmas.detach().clone()), real_denoise(model, x_t, sigmas, **kw))[1]
        with injected_indices(th, idx, n):
            loss = diffusion.consistency_losses(model, x, n, model_kwargs={"y": y}, target_model=tgt, noise=z)["loss"].mean()
        diffusion.denoise = real_denoise
        out[f"train/{k}/t"], out[f"train/{k}/t2"] = seen[0].numpy(), seen[1].numpy()
        loss.backward()
        opt.step()
        with th.no_grad():
            update_ema(ema, list(model.parameters()), rate=ema_rate)
            mu2, _ = fn(k)
            update_ema(list(tgt.parameters()), list(model.parameters()), rate=mu2)
        out[f"train/{k}/loss"] = np.array([loss.item()], dtype=np.float64)
        sched.append({"step": k, "N": n, "mu": mu, "loss": loss.item()})
        print(f"train step {k}: N {n}, mu {mu:.8g}, loss {loss.item():.8g}")
    summaries("train/student/", model.parameters())
    summaries("train/target/", tgt.parameters())
    summaries("train/ema/", ema)
    meta["train"] = {"steps": steps, "lr": lr, "ema_rate": ema_rate, "s0": 2, "s1": 10, "mu0": 0.9, "total_steps": 8,
                     "schedule": sched}

    os.makedirs(args.out, exist_ok=True)
    safetensors_np.save(os.path.join(args.out, "reference.safetensors"), out,
                        {"generator": "tools/reference_equivalence.py"})
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
