"""One optimiser step of the SR GAN: ``grad_accum`` generator micro-batches, then the discriminator.

    result = optimizer_step(backend, terms, next_batch, StepOptions(grad_accum=2, gan=True), stop_signal=0)

Order per step (DDP back-end):

1. every G micro-batch: forward, the weighted loss terms (D frozen and called through its raw module, no
   wrapper hooks), backward (gradients synchronised on the last micro-batch only);
2. every D micro-batch, on the same batches with SR detached: forward on HR and SR, loss, backward. D's
   gradients do not depend on G's update (the fakes are detached, D is unchanged by it), so computing them
   before
   G's optimiser step gives the same update as the classic order, and lets the next point see both;
3. the global gradient norms of G and D on the device (``backend.grad_norm``; their gradients are final:
   DDP all-reduced them in the last backward), then ONE small all-reduce (MAX) of [stop signal, non-finite
   G loss or G gradients, non-finite D loss or D gradients] and ONE host read: every rank takes the same
   decision: step G and D, or skip the step everywhere (non-finite gradients come from a finite loss too:
   sqrt at 0);
4. optimiser steps (clipping with the norms of 3, loss scaling) of G and D, with no further host read.
   Where a back-end gives no norm before its step (fp16's GradScaler, DeepSpeed) it skips non-finite
   updates itself and the step reads the returned G norm once to count the step as skipped.

Losses stay on the device (no ``.item()`` per micro-batch); the caller reads them at log steps.
The DeepSpeed back-end keeps non-finite gradients out of its partitioned ZeRO buffers: it agrees on a micro-
batch's loss before its backward (``backend.finite_check_before_backward``), one extra collective each. With
``n_d > 1`` the 2nd and later D updates each agree once more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hpc_sr.dist.collectives import max_over_ranks
from hpc_sr.imaging import lr_image
from hpc_sr.models.losses import LossInputs, WeightedTerm, discriminator_loss
from hpc_sr.train.backends.base import Backend

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class StepOptions:
    """What one step needs to know beyond the models: accumulation, phase, D updates, AMP/layout flags.

    Immutable: the trainer holds one per phase and derives a fault-injection copy with ``replace``.
    """

    grad_accum: int = 1
    gan: bool = False
    n_d: int = 1
    adversarial_kind: str = "ragan"
    channels_last: bool = False
    poison: bool = False  # fault injection: make this step's G loss NaN (hpc_sr.train.faults)
    samples_per_input: int = 1  # > 1: each LR (and HR) repeated, sample-major, for a stochastic generator
    antithetic_noise: int = 0  # K > 0: G's K noise channels drawn as pairs (z, -z) over the samples


@dataclass
class StepResult:
    """Losses (device tensors, means over micro-batches), grad norms, and the agreed decisions."""

    losses: dict[str, Tensor] = field(default_factory=dict)
    grad_norms: dict[str, Tensor | float] = field(default_factory=dict)
    skipped: bool = False
    stop_signal: int = 0
    data_time: float = 0.0


def antithetic_samples(g: torch.nn.Module, lr: Tensor, channels: int, samples: int) -> Tensor:
    """A centred generator's samples for a sample-major batch ``lr`` of ``samples`` (even) copies per input:
    samples 2i and 2i+1 of each input are the pair (z, -z), both from one ``g(.., pair=True)`` call on
    ``samples / 2`` copies (three network passes per pair, not six), returned sample-major as ``lr``."""
    if samples % 2:
        raise ValueError(f"antithetic noise needs an even number of samples per input, got {samples}")
    half = lr[: lr.shape[0] // 2]  # copies 0 .. samples/2 - 1 of every input
    z = torch.randn((half.shape[0], channels, *lr.shape[-2:]), device=lr.device, dtype=lr.dtype)
    out = g(half, z, pair=True)  # (2, samples/2, B, ...): [+z draws; -z draws]
    b = lr.shape[0] // samples
    return out.unflatten(0, (2, samples // 2, b)).transpose(0, 1).reshape(lr.shape[0], *out.shape[1:])


def _not_finite(loss: Tensor) -> Tensor:
    return (~torch.isfinite(loss.detach())).any().float().reshape(1)


def generator_terms(
    terms: list[WeightedTerm],
    sr: Tensor,
    hr: Tensor,
    lr: Tensor,
    d_raw: torch.nn.Module | None,
    samples: int = 1,
    antithetic: bool = False,
) -> dict[str, Tensor]:
    """Weighted loss terms of G on one micro-batch (D terms only when ``d_raw`` is given); ``samples`` draws
    per input, sample-major (see :class:`~hpc_sr.models.losses.LossInputs`)."""
    x = LossInputs(sr=sr.float(), hr=hr, lr=lr, samples=samples, antithetic=antithetic)
    active = [t for t in terms if d_raw is not None or not t.term.needs_discriminator]
    if d_raw is not None and any(t.term.needs_discriminator for t in active):
        d_raw.requires_grad_(False)  # D frozen in the G step; called without its DDP/engine wrapper
        try:
            x.fake_logits, x.fake_feats = d_raw.forward_features(sr)
            with torch.no_grad():
                x.real_logits, x.real_feats = d_raw.forward_features(hr)
        finally:
            d_raw.requires_grad_(True)
    return {t.name: t.weight * t.term(x) for t in active}


def optimizer_step(
    backend: Backend,
    terms: list[WeightedTerm],
    next_batch: Callable[[], Batch],
    opts: StepOptions,
    stop_signal: int = 0,
) -> StepResult:
    """One optimiser step of G (and D in the GAN phase); see the module docstring for the order."""
    b, res = backend, StepResult()
    device = b.device
    early = b.finite_check_before_backward
    bad_g = torch.zeros(1, device=device)
    d_raw = b.module("d") if opts.gan else None
    batches: list[tuple[Tensor, Tensor]] = []
    sums: dict[str, Tensor] = {}
    for micro in range(opts.grad_accum):
        t0 = time.perf_counter()
        lr, hr = next_batch()
        if opts.samples_per_input > 1:  # M samples of each input: rows m * B + b (sample-major)
            lr, hr = lr.repeat(opts.samples_per_input, 1, 1, 1), hr.repeat(opts.samples_per_input, 1, 1, 1)
        if opts.channels_last:  # HR too: D reads it (and SR, which a channels_last G already returns)
            lr = lr.contiguous(memory_format=torch.channels_last)
            hr = hr.contiguous(memory_format=torch.channels_last)
        res.data_time += time.perf_counter() - t0
        last = micro == opts.grad_accum - 1
        with b.accumulate("g", last):
            with b.autocast():
                if opts.antithetic_noise:
                    g = b.model("g")
                    sr = antithetic_samples(g, lr, opts.antithetic_noise, opts.samples_per_input)
                else:
                    sr = b.model("g")(lr)
                parts = generator_terms(  # the loss terms see LR's image channels (not its LR blur)
                    terms, sr, hr, lr_image(lr, hr.shape[1]), d_raw, opts.samples_per_input,
                    bool(opts.antithetic_noise),
                )
            loss = torch.stack([p.float() for p in parts.values()]).sum()
            if opts.poison:
                loss = loss * float("nan")
            if early and _agreed_bad(_not_finite(loss), stop_signal, res):
                return _skip(b, res)
            bad_g = torch.maximum(bad_g, _not_finite(loss))
            b.backward("g", loss, last)
        for k, v in parts.items():
            sums[f"loss_g_{k}"] = sums.get(f"loss_g_{k}", 0) + v.detach().float() / opts.grad_accum
        batches.append((hr, sr.detach()))
    bad_d = torch.zeros(1, device=device)
    if opts.gan:
        bad_d = _discriminator_backward(b, batches, opts, sums, stop_signal, res)
        if res.skipped:
            return res
    norms = {name: b.grad_norm(name) for name in (("g", "d") if opts.gan else ("g",))}
    bad_g = torch.maximum(bad_g, _not_finite(norms["g"])) if norms["g"] is not None else bad_g
    if opts.gan and norms["d"] is not None:
        bad_d = torch.maximum(bad_d, _not_finite(norms["d"]))
    flags = torch.cat([torch.tensor([float(stop_signal)], device=device), bad_g, bad_d])
    agreed = max_over_ranks(flags).tolist()  # the one collective and host read of the step
    res.stop_signal = int(agreed[0])
    if agreed[1] > 0 or agreed[2] > 0:
        return _skip(b, res)
    res.grad_norms["g"] = b.step("g")
    b.zero_grad("g")
    # a back-end that decided itself (no norm before the step) may have skipped a non-finite update; D with it
    if norms["g"] is None and not _finite_norm(res.grad_norms["g"]):
        for name in b.names():
            b.zero_grad(name)
        res.skipped, res.losses = True, {}
        return res
    if opts.gan:
        res.grad_norms["d"] = b.step("d")
        b.zero_grad("d")
        for _ in range(opts.n_d - 1):  # further D updates on the same batches
            _discriminator_backward(b, batches, opts, sums, res.stop_signal, res, agree_now=True)
            if res.skipped:
                return res
            res.grad_norms["d"] = b.step("d")
            b.zero_grad("d")
    res.losses = sums
    return res


def _discriminator_backward(
    b: Backend,
    batches: list[tuple[Tensor, Tensor]],
    opts: StepOptions,
    sums: dict[str, Tensor],
    stop_signal: int,
    res: StepResult,
    agree_now: bool = False,
) -> Tensor:
    """Forward/backward of D on every micro-batch; returns the local non-finite flag."""
    bad = torch.zeros(1, device=b.device)
    early = b.finite_check_before_backward or agree_now
    for micro, (hr, fake) in enumerate(batches):
        last = micro == len(batches) - 1
        with b.accumulate("d", last):
            with b.autocast():
                d = b.model("d")
                loss_d = discriminator_loss(d(hr).float(), d(fake).float(), opts.adversarial_kind)
            if early and _agreed_bad(_not_finite(loss_d), stop_signal, res):
                _skip(b, res)
                return bad
            bad = torch.maximum(bad, _not_finite(loss_d))
            b.backward("d", loss_d, last)
        sums["loss_d"] = sums.get("loss_d", 0) + loss_d.detach() / (len(batches) * opts.n_d)
    return bad


def _finite_norm(norm: Tensor | float) -> bool:
    """A grad norm the back-end reports (nan when unknown, e.g. DeepSpeed ZeRO without clipping, counts as
    finite: the back-end did step)."""
    if isinstance(norm, Tensor):
        value = float(norm)
        return value == value and value != float("inf")  # NaN or +inf: the update was skipped
    return True


def _agreed_bad(local_bad: Tensor, stop_signal: int, res: StepResult) -> bool:
    """Per-micro-batch agreement (DeepSpeed, extra D updates): any rank's non-finite loss skips everywhere."""
    flags = torch.cat([torch.tensor([float(stop_signal)], device=local_bad.device), local_bad])
    agreed = max_over_ranks(flags).tolist()
    res.stop_signal = max(res.stop_signal, int(agreed[0]))
    return agreed[1] > 0


def _skip(b: Backend, res: StepResult) -> StepResult:
    """A non-finite loss on some rank: drop this step's gradients everywhere."""
    for name in b.names():
        b.zero_grad(name)
    res.skipped = True
    res.losses = {}
    return res
