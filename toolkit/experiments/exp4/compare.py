"""exp4.compare — every pair of exp4.generate runs (N×N, replicates included as the control).

Per pair and prompt: the first step whose generated token ids differ (d), the first step whose
full logits rows differ in any bit, the largest token-aligned logit difference in fp32 ULPs over
the steps with identical contexts (0..d), and both runs' top-1/top-2 margins at row d — the step
computed from identical inputs whose argmax differs (the upstream scripts looked at d-1).

The field's metrics over all runs (`toolkit.numerics.agreement.run_agreement`, definitions and
sources in docs/field_metrics.md): unique completions of N per prompt, TARr@N per class of
replicates, the free-running per-step flip rate over the steps with identical context (0..d of
each pair: at most one flip per pair and prompt), margins at flips against all steps, and per
axis (the one setting two runs differ in) its pairs and survival curve; attr `field_summary`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.experiments.exp4.figures import plot_compare as plot  # noqa: F401 (re-export for the registry)

if TYPE_CHECKING:
    from toolkit.context import RunContext, RunView

PER_TARGET = False
NEEDS_MODEL = False
READS: tuple[str, ...] = ("exp4.generate",)
READS_PROMPTS = False
NEEDS_EAGER_ATTENTION = False
UPSTREAM_MIN_RUNS = 2  # N x N pairs of runs: one run has nothing to compare with
DIMS = {"2": "side"}  # names of the STORES letters (toolkit.store.dims): run i, run j
STORES = {
    "run_task_ids / run_labels": "[N] the compared exp4.generate runs, in matrix order",
    "first_divergence": "[N,N,P] int32 first step with different token ids (-1: none within common length)",
    "common_length": "[N,N,P] int32 steps both runs generated",
    "first_bitwise_diff": "[N,N,P] int32 first step whose logits rows differ in any bit (-1: none)",
    "max_ulp_identical_context": "[N,N,P] int64 max fp32-ULP distance of token-aligned top-k logits, steps 0..d",
    "margin_at_divergence": "[N,N,P,2] float64 top-1 − top-2 of run i and run j at row d (NaN: no divergence)",
    "tokens_at_divergence": "[N,N,P,2] int64 token chosen by run i and run j at row d (-1: none)",
    # the field's metrics (toolkit.numerics.agreement.run_agreement; docs/field_metrics.md)
    "unique_completions": "[P] int32 distinct generated sequences per prompt among the N runs",
    "replicate_class": "[N] int32 class of replicates (equal target, numerics and params) of each run",
    "class_size / tarr": "[C], [C] runs per replicate class (int32); its TARr@N over the prompts (float64)",
    "flip_count / flip_steps": "[N,N] int64 free-running flips; steps with identical context (all prompts)",
    "margin_at_flips": "[F,2] float64 margins of run i and run j (i < j) at each flip",
    "margin_all_steps": "[S] float64 the margin of every step of every run",
    "pairs/<axis>": "[Q,2] int32 pairs of runs differing only in <axis> (or replicates)",
    "survival/<axis>": "[T] float64 fraction of those pairs x prompts identical over the first t tokens",
}


@dataclass(frozen=True)
class Params:
    """No parameters: every pair of the upstream runs is compared."""


def run(ctx: RunContext, params: Params) -> None:
    """Compare all pairs of upstream generate runs and store the N×N×P tables."""
    import numpy as np

    from toolkit.experiments.exp4.upstream import TRACE_FIELDS, check_same_prompts, load_traces
    from toolkit.numerics.agreement import agreement_summary

    runs = ctx.inputs.matching("exp4.generate", min_runs=2)
    traces = [load_traces(r, (*TRACE_FIELDS, "logits_hash")) for r in runs]
    check_same_prompts(runs, traces)
    n, p = len(runs), len(traces[0])
    tables: dict[str, np.ndarray] = {
        "first_divergence": np.full((n, n, p), -1, np.int32),
        "common_length": np.zeros((n, n, p), np.int32),
        "first_bitwise_diff": np.full((n, n, p), -1, np.int32),
        "max_ulp_identical_context": np.zeros((n, n, p), np.int64),
        "margin_at_divergence": np.full((n, n, p, 2), np.nan),
        "tokens_at_divergence": np.full((n, n, p, 2), -1),
    }
    bar = ctx.progress(n * n * p)
    for i in range(n):
        for j in range(n):
            for k in range(p):
                for name, value in compare_pair(traces[i][k], traces[j][k]).items():
                    tables[name][i, j, k] = value
                bar.update()
    ctx.out.create_dataset("run_task_ids", data=np.array([r.task_id for r in runs], dtype="S"))
    labels = identity_labels(runs)
    ctx.out.create_dataset("run_labels", data=np.array(labels, dtype="S"))
    for name, table in tables.items():
        ctx.out.create_dataset(name, data=table)
    field = _field_metrics(runs, traces)
    for name, value in field.items():
        ctx.out.create_dataset(name, data=value)
    ctx.out.attrs["summary"] = summary_table(labels, tables)
    ctx.out.attrs["field_summary"] = "\n".join(agreement_summary(field, p))


def _field_metrics(runs: list[RunView], traces: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The field's agreement metrics; a run's settings are its target, numerics and params."""
    from toolkit.numerics.agreement import run_agreement

    settings = [{"target": r.target, **r.numerics, "params": r.params} for r in runs]
    ids = [[t["generated_ids"] for t in run] for run in traces]
    return run_agreement(settings, ids, [[t["margin"] for t in run] for run in traces])


# provenance `device_identity` fields that decide whether two runs may be bitwise equal (cuBLAS
# promises it only for the same architecture, SM count and library versions), in label order
IDENTITY_FIELDS = ("sku", "processor", "sm_count", "driver", "cuda", "cublas", "torch", "blas")


def identity_labels(runs: list[Any]) -> list[str]:
    """Each run's label, followed by the device identity fields (SKU, SMs, driver, CUDA, cuBLAS,
    torch; on a CPU processor and BLAS) that differ between the runs, e.g.
    `a100 r0 float32/eager/kv {sku NVIDIA A100-SXM4-80GB, sm_count 108}`; the plain label when
    every run has the same identity (or none is recorded)."""
    identities = [dict(r.attrs.get("provenance", {}).get("device_identity") or {}) for r in runs]
    differ = [f for f in IDENTITY_FIELDS if len({str(i.get(f, "-")) for i in identities}) > 1]
    labels = []
    for run, identity in zip(runs, identities):
        extra = ", ".join(f"{f} {identity.get(f, '-')}" for f in differ)
        plain = run.label()
        labels.append(f"{plain} {{{extra}}}" if extra else plain)
    return labels


def compare_pair(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Divergence measures of one prompt between two runs (see the module docstring)."""
    import numpy as np

    from toolkit.numerics.fpunits import ulp_distance
    from toolkit.numerics.greedy import first_difference

    common = min(len(a["generated_ids"]), len(b["generated_ids"]))
    d = first_difference(a["generated_ids"][:common].tolist(), b["generated_ids"][:common].tolist())
    bit = np.nonzero(a["logits_hash"][:common] != b["logits_hash"][:common])[0]
    last = d if d >= 0 else common - 1
    max_ulp = 0
    for step in range(last + 1):
        ids_a, ids_b = a["topk_ids"][step], b["topk_ids"][step]
        shared, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
        if shared.size:
            dist = ulp_distance(a["topk_logits"][step][ia], b["topk_logits"][step][ib])
            max_ulp = max(max_ulp, int(dist.max()))
    out: dict[str, Any] = {
        "first_divergence": d,
        "common_length": common,
        "first_bitwise_diff": int(bit[0]) if bit.size else -1,
        "max_ulp_identical_context": max_ulp,
    }
    if d >= 0:
        out["margin_at_divergence"] = (a["margin"][d], b["margin"][d])
        out["tokens_at_divergence"] = (a["generated_ids"][d], b["generated_ids"][d])
    return out


def identical_classes(tables: dict[str, Any]) -> list[list[int]]:
    """Groups of runs that are bit-identical to each other on every prompt (logits and tokens)."""
    import numpy as np

    n = tables["first_divergence"].shape[0]
    classes: list[list[int]] = []
    for i in range(n):
        for members in classes:
            j = members[0]
            if (
                np.all(tables["first_bitwise_diff"][i, j] == -1)
                and np.all(tables["first_divergence"][i, j] == -1)
                and np.array_equal(tables["common_length"][i, j], tables["common_length"][i, i])
            ):
                members.append(i)
                break
        else:
            classes.append([i])
    return classes


def summary_table(labels: list[str], tables: dict[str, Any]) -> str:
    """Classes of bit-identical runs, then one line per pair of classes."""
    import numpy as np

    classes = identical_classes(tables)
    names = [chr(ord("A") + k) if k < 26 else f"C{k}" for k in range(len(classes))]
    p = tables["first_divergence"].shape[2]
    lines = [f"{len(labels)} runs form {len(classes)} class(es) of bit-identical runs (all {p} prompts):"]
    for name, members in zip(names, classes):
        lines.append(f"  [{name}] " + ", ".join(labels[i] for i in members))
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            i, j = classes[a][0], classes[b][0]
            d = tables["first_divergence"][i, j]
            hit = d[d >= 0]
            bits = tables["first_bitwise_diff"][i, j]
            where = f"median step {np.median(hit):.0f}, earliest {hit.min()}" if hit.size else "no token differs"
            first_bit = f"; logits first differ at step {bits[bits >= 0].min()}" if (bits >= 0).any() else ""
            lines.append(f"  {names[a]} vs {names[b]}: {hit.size}/{p} prompts diverged ({where}){first_bit}")
    return "\n".join(lines)
