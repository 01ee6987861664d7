"""The tidy table of each experiment whose results are naturally rows (see docs/tables.md).

`TABLES` maps an experiment name to a function from one stored run to its columns (name → numpy
array, all of one length, values in their stored dtype); `toolkit.store.tables` adds the run's
keys and joins the runs.  Each function reads only the run's datasets and attributes, as its
experiment's `STORES` declares them, so a table is a view of the store, never a recomputation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from toolkit.store.reader import RunView

Columns = dict[str, "np.ndarray[Any, Any]"]


def _text(values: Any) -> np.ndarray[Any, Any]:
    """Stored bytes / strings as a Python str object array."""
    import numpy as np

    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _join(parts: list[Columns]) -> Columns:
    import numpy as np

    if not parts:
        return {}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _prompts(run: RunView) -> list[tuple[int, str]]:
    """(prompt index, group path) of every `prompts/<k>` group, in index order."""
    if "prompts" not in run:
        return []
    return sorted((int(key), f"prompts/{key}") for key in run.group["prompts"])


def exp4_generate(run: RunView) -> Columns:
    """One row per prompt × generation step: token, margin, logits hash, top-1/top-2 logits."""
    import numpy as np

    parts = []
    for index, base in _prompts(run):
        ids = run[f"{base}/generated_ids"]
        n = len(ids)
        logits = run[f"{base}/topk_logits"]
        top2 = logits[:, 1] if logits.shape[1] > 1 else np.full(n, np.nan, dtype=logits.dtype)
        parts.append(
            {
                "prompt": np.full(n, index, dtype=np.int64),
                "step": np.arange(n, dtype=np.int64),
                "token_id": ids,
                "margin": run[f"{base}/margin"],
                "logits_hash": run[f"{base}/logits_hash"],
                "top1_id": run[f"{base}/topk_ids"][:, 0],
                "top1_logit": logits[:, 0],
                "top2_logit": top2,
                "prompt_length": np.full(n, len(run[f"{base}/prompt_ids"]), dtype=np.int64),
            }
        )
    return _join(parts)


def exp4_compare(run: RunView) -> Columns:
    """One row per pair of runs (i < j) × prompt: first divergence, bitwise step, margins, tokens."""
    import numpy as np

    tasks, labels = _text(run["run_task_ids"]), _text(run["run_labels"])
    first = run["first_divergence"]
    n, p = first.shape[0], first.shape[2]
    i, j = np.triu_indices(n, k=1)
    i, j = np.repeat(i, p), np.repeat(j, p)
    prompt = np.tile(np.arange(p, dtype=np.int64), n * (n - 1) // 2)
    margins, tokens = run["margin_at_divergence"], run["tokens_at_divergence"]
    return {
        "run_i": i.astype(np.int64),
        "run_j": j.astype(np.int64),
        "task_i": tasks[i],
        "task_j": tasks[j],
        "label_i": labels[i],
        "label_j": labels[j],
        "prompt": prompt,
        "first_divergence": first[i, j, prompt],
        "common_length": run["common_length"][i, j, prompt],
        "first_bitwise_diff": run["first_bitwise_diff"][i, j, prompt],
        "max_ulp_identical_context": run["max_ulp_identical_context"][i, j, prompt],
        "margin_i": margins[i, j, prompt, 0],
        "margin_j": margins[i, j, prompt, 1],
        "token_i": tokens[i, j, prompt, 0],
        "token_j": tokens[i, j, prompt, 1],
    }


def pdf_word_prediction(run: RunView) -> Columns:
    """One row per word: every per-word dataset, words as text, top-k as `topk_id_<r>` /
    `topk_prob_<r>` (r = 1 … K)."""
    per_word = (
        "word_index char_start char_end page token_start token_end window_start context_tokens scored "
        "top1_match shared_token true_id rank logit prob logprob_first logprob_word margin cosine"
    ).split()
    out: Columns = {"word": _text(run["words"])}
    out.update({name: run[name] for name in per_word if name in run})
    ids, probs = run["topk_ids"], run["topk_probs"]
    for r in range(ids.shape[1]):
        out[f"topk_id_{r + 1}"] = ids[:, r]
        out[f"topk_prob_{r + 1}"] = probs[:, r]
    return out


def exp2_lipschitz(run: RunView) -> Columns:
    """One row per prompt × singular triplet: σ_i (descending) and its residual."""
    import numpy as np

    parts = []
    for index, base in _prompts(run):
        sigma = run[f"{base}/sigma"]
        n = len(sigma)
        parts.append(
            {
                "prompt": np.full(n, index, dtype=np.int64),
                "singular_index": np.arange(1, n + 1, dtype=np.int64),
                "sigma": sigma,
                "residual": run[f"{base}/residual"],
                "prompt_length": np.full(n, len(run[f"{base}/prompt_ids"]), dtype=np.int64),
            }
        )
    return _join(parts)


def exp5_module_lipschitz(run: RunView) -> Columns:
    """One row per prompt × layer × module × singular triplet: σ_i, residual, and the module's
    gain along a random direction, input/output norms and faithfulness."""
    import numpy as np

    layers, modules, qualified = run["layer_indices"], _text(run["modules"]), _text(run["module_names"].reshape(-1))
    parts = []
    for index, base in _prompts(run):
        sigma = run[f"{base}/sigma"]
        n_l, n_m, n_k = sigma.shape
        li, mi, ki = (a.reshape(-1) for a in np.meshgrid(range(n_l), range(n_m), range(n_k), indexing="ij"))
        per_module = {
            name: run[f"{base}/{name}"][li, mi]
            for name in ("jacobian_gain_random", "input_norm", "output_norm", "faithful")
        }
        parts.append(
            {
                "prompt": np.full(len(li), index, dtype=np.int64),
                "layer": layers[li].astype(np.int64),
                "module": modules[mi],
                "module_name": qualified[li * n_m + mi],
                "singular_index": (ki + 1).astype(np.int64),
                "sigma": sigma[li, mi, ki],
                "residual": run[f"{base}/residual"][li, mi, ki],
                **per_module,
            }
        )
    return _join(parts)


def _scalar_attrs(group: Any) -> dict[str, Any]:
    import numpy as np

    out = {}
    for key, value in group.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, (str, bool, int, float, np.generic)):
            out[key] = value
    return out


def exp7_maps(run: RunView) -> Columns:
    """One row per stored map (`maps/<m>`): its size, the sign balance of its gap and every
    scalar attribute of the map (exp7.randomness: its metrics; exp7.heatmap: counts, centre gap)."""
    import numpy as np

    from toolkit.store.tables import column

    if "maps" not in run:
        return {}
    rows = []
    for name in sorted(run.group["maps"]):
        group = run.group[f"maps/{name}"]
        gap = group["gap"][()]
        row: dict[str, Any] = {"map": name, "n1": gap.shape[0], "n2": gap.shape[1]}
        row["gap_min"], row["gap_max"] = float(np.nanmin(gap)), float(np.nanmax(gap))
        row["fraction_gap_positive"] = float(np.mean(gap > 0))
        row.update(_scalar_attrs(group))
        rows.append(row)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: np.asarray(column([row.get(k) for row in rows]), dtype=None) for k in keys}


def exp4_census(run: RunView) -> Columns:
    """One row per prompt × completion: its length, class, batch draw, first divergence from
    the modal completion and teacher-forcing flip counts."""
    import numpy as np

    per_completion = (
        "completion_length completion_class batch_size batch_position batch_seed first_divergence "
        "tf_flips_modal tf_flips_alone"
    ).split()
    parts = []
    for index, base in _prompts(run):
        n = run[f"{base}/completion_ids"].shape[0]
        part: Columns = {
            "prompt": np.full(n, index, dtype=np.int64),
            "completion": np.arange(n, dtype=np.int64),
        }
        part.update({name: run[f"{base}/{name}"] for name in per_completion if f"{base}/{name}" in run})
        if f"{base}/batch_fill" in run:
            part["batch_fill"] = _text(run[f"{base}/batch_fill"])
        if f"{base}/margin_at_divergence" in run:
            margins = run[f"{base}/margin_at_divergence"]
            part["margin_at_divergence"], part["modal_margin_at_divergence"] = margins[:, 0], margins[:, 1]
        part["is_modal"] = np.arange(n) == int(run[f"{base}/modal_index"])
        parts.append(part)
    return _join(parts)


TABLES: dict[str, Callable[[RunView], Columns]] = {
    "exp2.lipschitz": exp2_lipschitz,
    "exp4.generate": exp4_generate,
    "exp4.census": exp4_census,
    "exp4.compare": exp4_compare,
    "exp5.module_lipschitz": exp5_module_lipschitz,
    "exp7.heatmap": exp7_maps,
    "exp7.zoom": exp7_maps,
    "exp7.randomness": exp7_maps,
    "pdf.word_prediction": pdf_word_prediction,
}
