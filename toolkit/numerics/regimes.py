"""Classify a finite-difference response into absorbed / signal / nonlinear / chaotic regimes.

For a perturbation x̃ = x + ε·v rounded to the model's format, let δ = x̃ − x be the realised
perturbation, Δf = f(x̃) − f(x) the measured response and Jδ the linear prediction (J = ∂f/∂x
at x, applied by a JVP in the model's own dtype: the linearisation of the very computation being
measured).  The relative deviation d(ε) = ‖Δf − Jδ‖ / ‖Jδ‖ has a U shape over ε: rounding noise
of f is roughly constant in size, so its share falls like 1/ε, while the nonlinearity of f grows
like ε (or faster).  With a tolerance τ (`signal_tol`) and ε* the ε of smallest d among the
propagated responses:

* `absorbed_input`  (0) x̃ == x: rounding the input to the model's format removed the perturbation;
* `absorbed_output` (1) x̃ != x but f(x̃) == f(x) bit for bit: the network's rounding absorbed it;
* `signal`          (2) d ≤ τ: the response is the linear signal (gain ≈ ‖Jδ‖/‖δ‖, σ1 along v1);
* `nonlinear`       (3) d > τ and ε > ε*: the deviation grows with ε — curvature of a smooth f;
* `chaotic`         (4) d > τ and ε ≤ ε*: the deviation shrinks as ε grows — the response is
                        dominated by rounding noise (the upstream "rounding-inflated Lipschitz"
                        estimates live here).

τ = 0.1 by default: a response within 10% of its linear prediction is called signal.
Low-precision JVPs carry their own rounding (bf16: about 2⁻⁸ per operation), so τ must stay well
above the JVP's own error.
"""

from __future__ import annotations

from typing import Any

REGIMES = ("absorbed_input", "absorbed_output", "signal", "nonlinear", "chaotic")


def relative_deviation(measured: Any, predicted: Any) -> Any:
    """‖measured − predicted‖ / ‖predicted‖ row-wise for [..., D] float64 numpy arrays (NaN: prediction 0)."""
    import numpy as np

    num = np.linalg.norm(measured - predicted, axis=-1)
    den = np.linalg.norm(predicted, axis=-1)
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def classify(input_changed: Any, output_changed: Any, deviation: Any, tol: float) -> Any:
    """int8 regime codes (indices into REGIMES), arrays [..., E] over an ascending ε grid (last axis)."""
    import numpy as np

    if not tol > 0:
        raise ValueError(f"signal tolerance must be > 0, got {tol}")
    inputs = np.asarray(input_changed, dtype=bool)
    outputs = np.asarray(output_changed, dtype=bool) & inputs
    dev = np.asarray(deviation, dtype=np.float64)
    codes = np.full(dev.shape, 4, dtype=np.int8)
    flat_codes, flat_dev, flat_out = (
        codes.reshape(-1, dev.shape[-1]),
        dev.reshape(-1, dev.shape[-1]),
        outputs.reshape(-1, dev.shape[-1]),
    )
    for row, values, live in zip(flat_codes, flat_dev, flat_out):
        usable = live & np.isfinite(values)
        if usable.any():
            best = int(np.nonzero(usable)[0][np.argmin(values[usable])])
            row[best + 1 :] = np.where(values[best + 1 :] > tol, 3, row[best + 1 :])
        row[values <= tol] = 2
    codes[~outputs] = 1
    codes[~inputs] = 0
    return codes
