"""Flow-matching ODE solvers over a SIGMAS schedule: Euler, Wan's FlowUniPC and DPM++ 2M.

Each solver integrates dx/dσ = v from sigmas[0] to sigmas[-1] for one trajectory. A solver object is that
trajectory's state: multistep solvers keep their own history, so the diffusion-forcing sampler gives every
latent frame its own instance and steps each one at its own pace. Solvers see tensors only, no models.

The multistep solvers work in the data-prediction form x0 = x − σ·v with λ = log((1 − σ) / σ). Their step
coefficients are computed from the float32 sigmas in float32 in the same order of operations as Wan's
official schedulers, which keeps CPU trajectories bit-identical to theirs (float64 coefficients drift by
about 1e-6).
"""
from __future__ import annotations

import torch


class FlowSolver:
    """One trajectory's integration state over `sigmas`; subclasses define how one step advances x."""

    def __init__(self, sigmas: torch.Tensor):
        if sigmas.ndim != 1 or len(sigmas) < 2:
            raise ValueError(f"sigmas must be 1-D with at least 2 levels, got shape {tuple(sigmas.shape)}")
        self.sigmas = sigmas.detach().to("cpu", torch.float32)
        self._next_index: int | None = None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def step(self, v: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        """Move `x` from sigmas[index] to sigmas[index + 1], given the velocity `v` predicted at (x, sigmas[index]).

        The first step may start at any index; after that the indices must follow one another, because the
        multistep history belongs to consecutive levels. The result has x's dtype; the arithmetic and the
        history run in at least float32.
        """
        if not 0 <= index < self.steps or (self._next_index is not None and index != self._next_index):
            expected = f"{self._next_index}" if self._next_index is not None else f"0..{self.steps - 1}"
            raise ValueError(f"solver step index {index} out of sequence; expected {expected}")
        dtype = torch.promote_types(x.dtype, torch.float32)
        x_next = self._advance(v.to(dtype), index, x.to(dtype))
        self._next_index = index + 1
        return x_next.to(x.dtype)

    def _advance(self, v: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Euler(FlowSolver):
    """First-order Euler: x ← x + (σ_{i+1} − σ_i)·v."""

    def _advance(self, v, i, x):
        return x + (self.sigmas[i + 1] - self.sigmas[i]) * v


class _DataPredictionSolver(FlowSolver):
    """Shared pieces of the solvers that step on x0 predictions in log-SNR λ."""

    def __init__(self, sigmas: torch.Tensor):
        super().__init__(sigmas)
        self.alphas = [1 - s for s in self.sigmas]
        # Element by element on 0-d tensors, like the official per-step computation (vectorized log can round
        # differently in the last bit). λ is -inf at σ = 1 and +inf at σ = 0; both limits work out below.
        self.lambdas = [torch.log(a) - torch.log(s) for a, s in zip(self.alphas, self.sigmas)]
        self._x0_history: list[torch.Tensor] = []

    def _x0(self, v: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        return x - self.sigmas[i] * v

    def _remember(self, x0: torch.Tensor) -> None:
        self._x0_history = (self._x0_history + [x0])[-2:]


class FlowUniPC(_DataPredictionSolver):
    """UniPC ('bh2', order 2, predicting x0) with the UniC corrector: Wan's default sampler.

    Same algorithm and numerics as Wan's `FlowUniPCMultistepScheduler` with its Wan configuration: the first
    step and the last step of the schedule are first order (warm-up, `lower_order_final`), the others second
    order; from the second step on, the sample is first corrected (UniC, of the previous step's order) with the
    new x0 prediction, and the x0 history keeps the prediction made at the uncorrected sample. The official
    scheduler finds its start by looking its int64 timestep up in the table (taking the second match when
    timesteps repeat, as they do for many steps at a large shift); here the caller passes the index.

    `skyreels_inplace_quirk`: reproduce SkyReels-V2's diffusion-forcing loop (and diffusers' port), which writes
    each frame's result in place into the latent view it passed to `step`; the official scheduler kept a
    reference to that view from the first step, so the first correction starts from the current sample instead
    of the previous one. Only for parity with those pipelines (it moves a 30-step result by about 0.6 %).
    """

    def __init__(self, sigmas: torch.Tensor, skyreels_inplace_quirk: bool = False):
        super().__init__(sigmas)
        self.skyreels_inplace_quirk = skyreels_inplace_quirk
        self._last_sample: torch.Tensor | None = None
        self._last_order = 0

    def _advance(self, v, i, x):
        x0 = self._x0(v, i, x)
        if self._last_sample is None:
            kept = x.clone()  # never alias the caller's tensor, which it may overwrite in place
        else:
            if self.skyreels_inplace_quirk and len(self._x0_history) == 1:
                self._last_sample = x  # what the official's kept view holds by the first correction
            x = kept = self._correct(x0, i)
        self._remember(x0)
        order = min(2, self.steps - i, len(self._x0_history))
        self._last_sample, self._last_order = kept, order
        return self._predict(x, i, order)

    def _predict(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        """UniP: from x at σ_i to σ_{i+1}, with the newest x0 and, at order 2, the one before."""
        m0 = self._x0_history[-1]
        h = self.lambdas[i + 1] - self.lambdas[i]
        h_phi_1 = torch.expm1(-h)
        x_next = self.sigmas[i + 1] / self.sigmas[i] * x - self.alphas[i + 1] * h_phi_1 * m0
        if order == 2:
            rk = (self.lambdas[i - 1] - self.lambdas[i]) / h
            d1 = (self._x0_history[-2] - m0) / rk
            # bh2 makes B(h) equal h·φ1 = e^(−h) − 1; at order 2 UniP uses the fixed weight ρ = 1/2
            x_next = x_next - self.alphas[i + 1] * h_phi_1 * (0.5 * d1)
        return x_next

    def _correct(self, x0: torch.Tensor, i: int) -> torch.Tensor:
        """UniC: redo the last step, σ_{i−1} → σ_i, from the stored sample with the new prediction `x0` too."""
        order = self._last_order
        m0, x_prev = self._x0_history[-1], self._last_sample
        h = self.lambdas[i] - self.lambdas[i - 1]
        hh = -h
        h_phi_1 = torch.expm1(hh)
        b_h = h_phi_1  # bh2
        x_corr = self.sigmas[i] / self.sigmas[i - 1] * x_prev - self.alphas[i] * h_phi_1 * m0
        d1_t = x0 - m0
        if order == 1:
            return x_corr - self.alphas[i] * b_h * (0.5 * d1_t)
        rk = (self.lambdas[i - 2] - self.lambdas[i - 1]) / h
        d1 = (self._x0_history[-2] - m0) / rk
        phi_2 = h_phi_1 / hh - 1
        b = torch.stack([phi_2 / b_h, (phi_2 / hh - 0.5) * 2 / b_h])
        r = torch.stack([torch.ones_like(b), torch.stack([rk, torch.ones_like(rk)])])
        # A history level at σ = 1 makes rk = -inf; LAPACK then returns the limit ρ = (0, b1), as officially.
        rho = torch.linalg.solve(r, b)
        return x_corr - self.alphas[i] * b_h * (rho[0] * d1 + rho[1] * d1_t)


class DPMPP2M(_DataPredictionSolver):
    """DPM-Solver++ 2M (midpoint) on x0 = x − σ·v, as Wan's `FlowDPMSolverMultistepScheduler` ('dpm++').

    The first and the last step are first order (the official `final_sigmas_type="zero"` forces the last).
    When σ_0 = 1 (Wan's and HunyuanVideo's linear schedules) λ_0 = -inf, so the first step is exactly Euler
    and the second step's multistep term vanishes (r = ∞): the official trajectory does the same.
    """

    def _advance(self, v, i, x):
        self._remember(self._x0(v, i, x))
        m0 = self._x0_history[-1]
        h = self.lambdas[i + 1] - self.lambdas[i]
        coeff = self.alphas[i + 1] * (torch.exp(-h) - 1.0)
        x_next = self.sigmas[i + 1] / self.sigmas[i] * x - coeff * m0
        if len(self._x0_history) == 2 and i < self.steps - 1:
            r0 = (self.lambdas[i] - self.lambdas[i - 1]) / h
            d1 = (1.0 / r0) * (m0 - self._x0_history[0])
            x_next = x_next - 0.5 * coeff * d1
        return x_next


SOLVERS: dict[str, type[FlowSolver]] = {"euler": Euler, "unipc": FlowUniPC, "dpm++_2m": DPMPP2M}
