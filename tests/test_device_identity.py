"""GPU identity beyond the name (issue 13 §3): exp4.compare's run labels and class listings name the
device identity fields (SKU, SM count, driver, CUDA, cuBLAS, torch) that differ between runs, and
`toolkit show` prints each run's identity.

Three exp4.generate runs are written as real shards with the provenance a worker records on two
H100 SKUs (SXM: 132 SMs, PCIe: 114) and gathered into a real store; the traces are identical, so the
runs stay one class of bit-identical runs whose listing must still say which card each ran on.
"""

from __future__ import annotations

import io

import h5py
import numpy as np
from conftest import make_task, run_cli

SXM = {
    "device": "cuda",
    "sku": "NVIDIA H100 80GB HBM3",
    "sm_count": 132,
    "compute_capability": "9.0",
    "driver": "550.54.15",
    "cuda": "12.4",
    "cublas": "12.4.5.8",
    "torch": "2.6.0+cu124",
}
PCIE = {**SXM, "sku": "NVIDIA H100 PCIe", "sm_count": 114}
RUNS = {
    "aaaa000000000001": ("h100", 0, SXM),
    "aaaa000000000002": ("h100", 1, SXM),
    "bbbb000000000003": ("h100", 2, PCIE),
}


def _trace() -> dict[str, np.ndarray]:
    return {
        "prompt_ids": np.array([1, 2], dtype=np.int64),
        "generated_ids": np.array([5, 6], dtype=np.int64),
        "topk_ids": np.array([[5, 4], [6, 4]], dtype=np.int64),
        "topk_logits": np.array([[2.0, 1.0], [3.0, 1.0]], dtype=np.float32),
        "margin": np.array([1.0, 2.0], dtype=np.float64),
        "logits_hash": np.array([11, 12], dtype=np.int64),
    }


def test_compare_labels_and_show_name_the_identity_that_differs(tmp_path):
    from toolkit.context import Inputs, RunContext
    from toolkit.experiments.exp4 import compare
    from toolkit.manifest import Numerics
    from toolkit.store.gather import gather
    from toolkit.store.reader import Store
    from toolkit.store.shard import open_shard

    for task_id, (target, repeat, identity) in RUNS.items():
        attrs = {
            "experiment": "exp4.generate",
            "exp_id": "generate",
            "target": target,
            "repeat": repeat,
            "params": {},
            "numerics": Numerics().to_dict(),
            "model": {},
            "inputs": [],
            "provenance": {"device_name": identity["sku"], "device_identity": identity},
        }
        with open_shard(tmp_path, task_id, attrs) as out:
            for name, value in _trace().items():
                out.create_dataset(f"prompts/000/{name}", data=value)
    gather(tmp_path, manifest_text="")
    task = make_task("exp4.compare", task_id="compare", exp_id="compare", target="", inputs=tuple(RUNS))
    with Store(tmp_path / "store.h5") as store, h5py.File(tmp_path / "compare.h5", "w") as out:
        ctx = RunContext(
            task=task,
            model=None,
            tokenizer=None,
            device=None,
            numerics=Numerics(),
            prompts=(),
            inputs=Inputs(store, tuple(RUNS)),
            out=out,
            progress_stream=io.StringIO(),
        )
        compare.run(ctx, compare.Params())
    with h5py.File(tmp_path / "compare.h5", "r") as table:
        order = [x.decode() for x in table["run_task_ids"][()]]
        labels = [x.decode() for x in table["run_labels"][()]]
        summary = table.attrs["summary"]
    kv = "float32/eager/kv"
    want = {
        "aaaa000000000001": f"h100 r0 {kv} {{sku NVIDIA H100 80GB HBM3, sm_count 132}}",
        "aaaa000000000002": f"h100 r1 {kv} {{sku NVIDIA H100 80GB HBM3, sm_count 132}}",
        "bbbb000000000003": f"h100 r2 {kv} {{sku NVIDIA H100 PCIe, sm_count 114}}",
    }
    assert labels == [want[t] for t in order]
    assert summary.splitlines()[:2] == [
        "3 runs form 1 class(es) of bit-identical runs (all 1 prompts):",
        "  [A] " + ", ".join(want[t] for t in order),
    ]
    show = run_cli("show", str(tmp_path / "store.h5"))
    assert show.code == 0, show.err
    sxm = (
        "      identity: sku NVIDIA H100 80GB HBM3, sm_count 132, compute_capability 9.0, driver 550.54.15, "
        "cuda 12.4, cublas 12.4.5.8, torch 2.6.0+cu124"
    )
    lines = show.out.splitlines()
    for task_id, (_, _, identity) in RUNS.items():
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  {task_id}  exp4.generate"))
        assert lines[at + 1] == (sxm if identity is SXM else sxm.replace("80GB HBM3", "PCIe").replace("132", "114"))
