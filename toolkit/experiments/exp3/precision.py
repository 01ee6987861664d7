"""exp3.precision — where a perturbation is absorbed by rounding, and where it propagates, per dtype.

One task per dtype: sweep `dtype: [float32, bfloat16, float16, float64]` in the manifest (the
worker loads the model once per dtype; float64 runs as a true fp64 model, see exp2), and add an
`exp3.compare` entry that needs this one to put the dtypes side by side.  Per prompt and task:

1. the top-k right singular vectors v_i of J = ∂f/∂x in the task's dtype (as exp1.layer_svd);
2. the exp1 measurement for x̃ = x + ε·v_i over the ε grid: realised input
   perturbation and per-row divergence (input, every decoder layer, final norm) with ULPs in the
   task's format;
3. linear predictions J·δ for the realised δ (JVP in the task's dtype, on δ/‖δ‖ so tiny δ do not
   underflow in float16), the deviation of the measured final-norm response from them, and the
   regime of each (v_i, ε): absorbed by input rounding, absorbed by the network's rounding, signal,
   nonlinear (curvature) or chaotic (rounding noise) — `toolkit.numerics.regimes`, tolerance
   `signal_tol` (documented there).

`gain` = ‖Δf‖/‖δ‖ is the finite-difference Lipschitz estimate along v_i (→ σ_i in the signal
regime).  float16 on CPU: the forward may overflow (activations above 65504); a non-finite
unperturbed forward stops the task with an error naming the first bad row.  bfloat16/float16 on
CPU are several times slower than float32 (no native kernels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.experiments.exp3.figures import plot_precision as plot  # noqa: F401 (re-export for the registry)
from toolkit.experiments.layer_sweep import LAYER_STORES, LayerSweepParams

if TYPE_CHECKING:
    from toolkit.context import RunContext

PER_TARGET = True
NEEDS_MODEL = True
READS: tuple[str, ...] = ()
READS_PROMPTS = True  # its tasks read the manifest's prompts
NEEDS_EAGER_ATTENTION = True  # JVPs through the model (torch.func.jvp): not under SDPA
STORES = {
    **LAYER_STORES,
    "prompts/<k>/final_delta": "[K,E,D] float64 f(x̃) − f(x) at the final norm",
    "prompts/<k>/linear_norm": "[K,E] float64 ‖Jδ‖ (linear prediction, JVP in the model dtype)",
    "prompts/<k>/gain": "[K,E] float64 ‖Δf‖/‖δ‖ (NaN: x̃ == x)",
    "prompts/<k>/deviation": "[K,E] float64 ‖Δf − Jδ‖/‖Jδ‖",
    "prompts/<k>/regime": "[K,E] int8 index into attrs regime_names",
}
METHOD = "x + ε·v_i per ε, full forwards; regimes from the deviation of Δf from the JVP prediction J·δ"


@dataclass(frozen=True)
class Params(LayerSweepParams):
    """As exp1.layer_svd (top_k directions swept over the geometric ε grid, same fields and checks),
    plus signal_tol: the relative deviation from the linear prediction below which a response is
    called signal (see toolkit.numerics.regimes)."""

    top_k: int = 1
    signal_tol: float = 0.1

    def check(self) -> list[tuple[str, str]]:
        problems = super().check()
        if not 0 < self.signal_tol < 1:
            problems.append(("signal_tol", f"must be between 0 and 1 (exclusive), got {self.signal_tol}"))
        return problems


def run(ctx: RunContext, params: Params) -> None:
    """Per prompt: the layer sweep, linear predictions and regimes; see the module docstring."""
    import json

    from toolkit.experiments.layer_sweep import (
        eps_grid,
        measure_prompt,
        record_settings,
    )
    from toolkit.numerics.regimes import REGIMES
    from toolkit.numerics.session import jacobian_setup, model_arithmetic

    setup = jacobian_setup(ctx, params.true_fp64)
    eps = eps_grid(params)
    bar = ctx.progress(len(ctx.prompts) * (params.iterations + 2 + params.top_k * len(eps)))
    out = ctx.out
    out.attrs["method"] = METHOD
    record_settings(ctx, params, setup.use_true_fp64)
    out.attrs["regime_names"] = json.dumps(REGIMES)
    out.attrs["signal_tol"] = params.signal_tol
    out.attrs["linear_prediction"] = "J(d/||d||)*||d|| by JVP in the model dtype, d = realised x~ - x"
    with model_arithmetic(ctx, setup.use_true_fp64):
        for index, prompt in enumerate(ctx.prompts):
            data, op, attrs = measure_prompt(ctx, params, prompt, eps, bar, keep_final=True)
            _check_finite(data["base_states"], ctx.numerics.dtype)
            data.update(regimes(op, data, params.signal_tol))
            bar.update()
            group = out.create_group(f"prompts/{index:03d}")
            group.attrs.update({"prompt": prompt, **attrs})
            group.attrs["position"] = int(data["prompt_ids"].shape[0] - 1)
            for name, value in data.items():
                group.create_dataset(name, data=value)
    bar.update(bar.total - bar.done)


def _check_finite(states: Any, dtype: str) -> None:
    import numpy as np

    bad = np.nonzero(~np.isfinite(states).all(axis=1))[0]
    if bad.size:
        raise ValueError(
            f"the unperturbed {dtype} forward is not finite from row {int(bad[0])} on "
            f"(0 = input, last = final norm): the format overflows for this model and prompt; "
            "use bfloat16 or float32"
        )


def regimes(op: Any, data: dict[str, Any], tol: float) -> dict[str, Any]:
    """gain, linear_norm, deviation and regime [K, E] from a layer sweep with `final_delta`."""
    import numpy as np

    from toolkit.numerics.regimes import classify, relative_deviation

    x = op.x.detach().double().cpu().numpy()
    predicted = _linear(op, data["x_tilde"] - x)  # δ exact for fp16/bf16/fp32
    measured = data["final_delta"]
    realised = data["realised_norm"]
    response = np.linalg.norm(measured, axis=-1)
    gain = np.divide(response, realised, out=np.full_like(response, np.nan), where=realised > 0)
    deviation = relative_deviation(measured, predicted)
    regime = classify(data["input_changed"] > 0, data["n_changed"][..., -1] > 0, deviation, tol)
    return {"gain": gain, "linear_norm": np.linalg.norm(predicted, axis=-1), "deviation": deviation, "regime": regime}


def _linear(op: Any, delta: Any) -> Any:
    """J·δ for δ [..., D] float64: JVPs of δ/‖δ‖ (no underflow in the model dtype), scaled back."""
    import numpy as np
    import torch

    flat = delta.reshape(-1, delta.shape[-1])
    norms = np.linalg.norm(flat, axis=1)
    units = np.divide(flat, norms[:, None], out=np.zeros_like(flat), where=norms[:, None] > 0)
    image = op.jvp(torch.from_numpy(units)).numpy() * norms[:, None]
    return image.reshape(*delta.shape[:-1], image.shape[-1])
