"""Benchmark: store size, gather time and read time with and without compression of large arrays.

Two real campaigns are run once with the local executor, one torch thread (or given with
`--campaign DIR`):

- one exp4.generate task of the demo, manifests/gpu_divergence.yaml (its model, prompts and
  params: packaged SmolLM2-135M, 4 prompts × 48 steps, final hidden states [48, 576] float32) —
  with `--demo`, the whole demo (12 generate runs, then exp4.compare; ~10 minutes more);
- a 201 × 201 exp7.heatmap map on the tiny random Llama (exp6.equal_logits finds the tie point,
  the heatmap evaluates 40,401 points: gap, argmax, logits_ab, distinct).

Then each campaign's shards are rewritten once per layout, through `toolkit.store.shard.open_shard`
(the worker's path, so dimension scales and checksums are made as in a run) with the same values
and attributes: `none` (contiguous), `lzf`, `gzip-1`, `gzip-4` (the toolkit's default) and `gzip-9`,
each with byte shuffle, applied to the arrays `toolkit.store.writer.compression_options` picks (numeric,
at least COMPRESS_MIN_BYTES).  For each layout: the time to write the shards (values in memory:
h5py and the filters), their total size, the time of a full `toolkit.store.gather.gather` (copy,
verify every checksum, fsync, rename), store.h5's size, and the time to read every dataset of
store.h5 back (warm cache, best of 3).  Prints each layout's figures and its ratio to `none`;
exits 1 if any layout's store does not read back bit for bit equal to `none`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LAYOUTS: dict[str, dict[str, Any]] = {
    "none": {},
    "lzf": {"shuffle": True, "compression": "lzf"},
    "gzip-1": {"shuffle": True, "compression": "gzip", "compression_opts": 1},
    "gzip-4": {"shuffle": True, "compression": "gzip", "compression_opts": 4},
    "gzip-9": {"shuffle": True, "compression": "gzip", "compression_opts": 9},
}
DEMO_SLICE_MANIFEST = """\
campaign: demo-slice
output: {output}
model: {{source: smollm2-135m, dtype: float32, attn_implementation: eager, kv_cache: true}}
prompts: {prompts}
targets: [cpu]
experiments:
  - {{name: exp4.generate, id: generate, params: {params}}}
"""
MAP_MANIFEST = """\
campaign: map201
output: {output}
model: {{source: tiny-random-llama, dtype: float32, attn_implementation: eager, kv_cache: false}}
prompts: ["The capital of France is"]
targets: [cpu]
experiments:
  - name: exp6.equal_logits
    id: tie
    params: {{method: geometric, iterations: 3, polish_steps: 2, n_directions: 2, svd_iterations: 2, oversample: 1,
              true_fp64: false}}
  - name: exp7.heatmap
    id: heatmap
    needs: [tie]
    params: {{planes: [[1, 2]], e_min: -1.0e-5, e_max: 1.0e-5, step: 1.0e-7, batch_size: 256, check_sample: 1}}
"""


def demo_slice(tmp: Path) -> Path:
    """A manifest of the demo's first exp4.generate task alone (its model, prompts and params)."""
    import yaml

    demo = yaml.safe_load((REPO / "manifests" / "gpu_divergence.yaml").read_text())
    params = next(e["params"] for e in demo["experiments"] if e["name"] == "exp4.generate")
    path = tmp / "demo-slice.yaml"
    prompts, params = json.dumps(demo["prompts"]), json.dumps(params)
    path.write_text(DEMO_SLICE_MANIFEST.format(output=tmp / "runs", prompts=prompts, params=params))
    return path


def submit(manifest: Path, root: Path) -> Path:
    """Run a manifest with the local executor into `root`; its campaign folder."""
    import yaml

    cmd = [sys.executable, "-m", "toolkit.cli", "submit", str(manifest), "--executor", "local", "--no-plot"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two threads on the 2-core machine: small ops 5-10x slower
    subprocess.run([*cmd, "--root", str(root)], check=True, cwd=REPO, stdout=subprocess.DEVNULL, env=env)
    return root / str(yaml.safe_load(manifest.read_text())["campaign"])


def rewrite(source: Path, dest: Path, layout: dict[str, Any]) -> None:
    """Copy the shards of campaign `source` into campaign `dest`, every big array in `layout`."""
    import h5py

    from toolkit.store.campaign_dir import CampaignDir
    from toolkit.store.dims import COORD_ATTR
    from toolkit.store.shard import open_shard
    from toolkit.store.writer import compression_options

    dest.mkdir(parents=True)
    shutil.copy(CampaignDir(source).plan_path, CampaignDir(dest).plan_path)
    for task_id, path in sorted(CampaignDir(source).completed_shards().items()):
        with h5py.File(path, "r") as src:
            skip = {"status", "run_uid", "started_utc", "finished_utc", "checksums"}
            attrs = {k: v for k, v in src.attrs.items() if k not in skip}
            with open_shard(dest, task_id, {}) as root:
                root.attrs.update(attrs)

                def copy(name: str, obj: Any, root: Any = root) -> None:
                    if isinstance(obj, h5py.Group):
                        root.require_group(name).attrs.update(dict(obj.attrs))
                    elif not obj.attrs.get(COORD_ATTR, False):
                        data = obj[()]
                        big = bool(layout) and bool(compression_options((), {"data": data}))
                        options = {"chunks": True, **layout} if big else {}
                        made = root.create_dataset(name, data=data, **options)
                        made.attrs.update({k: v for k, v in obj.attrs.items() if k.isidentifier() and k.islower()})

                src.visititems(copy)


def read_all(store: Path) -> dict[str, bytes]:
    import h5py

    out: dict[str, bytes] = {}
    with h5py.File(store, "r") as handle:
        handle.visititems(lambda n, o: out.__setitem__(n, o[()].tobytes()) if isinstance(o, h5py.Dataset) else None)
    return out


def measure(source: Path, work: Path) -> None:
    from toolkit.store.campaign_dir import CampaignDir
    from toolkit.store.gather import gather

    shards = sorted(CampaignDir(source).completed_shards().values())
    print(f"\n{source.name}: {len(shards)} shard(s)")
    head = f"{'write s':>8} {'shards MB':>10} {'store MB':>9} {'size/none':>9} {'gather s':>9} {'g/none':>7}"
    head += f" {'read s':>7}"
    print(f"  {'layout':<7} {head}")
    reference: dict[str, bytes] | None = None
    base: tuple[float, float, float] | None = None
    for name, layout in LAYOUTS.items():
        folder = work / f"{source.name}-{name}"
        write_s = _time(lambda f=folder, layout=layout: rewrite(source, f, layout))
        shard_mb = sum(p.stat().st_size for p in CampaignDir(folder).completed_shards().values()) / 1e6
        t0 = time.perf_counter()
        report = gather(folder)
        gather_s = time.perf_counter() - t0
        if report.bad_shards:
            raise SystemExit(f"bench_compression: FAIL: {name}: refused shards {report.bad_shards}")
        store = CampaignDir(folder).store_path
        store_mb = store.stat().st_size / 1e6
        read_s = min(_time(lambda s=store: read_all(s)) for _ in range(3))
        values = {k: v for k, v in read_all(store).items() if "/" in k}
        if reference is None:
            reference, base = values, (store_mb, gather_s, read_s)
        elif {k: v for k, v in values.items() if k in reference} != reference:
            raise SystemExit(f"bench_compression: FAIL: {name}: the store's values differ from the uncompressed one")
        assert base is not None
        print(
            f"  {name:<7} {write_s:>8.2f} {shard_mb:>10.2f} {store_mb:>9.2f} {store_mb / base[0]:>9.3f} "
            f"{gather_s:>9.2f} {gather_s / base[1]:>7.2f} {read_s:>7.3f}"
        )


def _time(func: Any) -> float:
    t0 = time.perf_counter()
    func()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--campaign",
        type=Path,
        action="append",
        help="measure this campaign folder (repeatable) instead of running the demo slice and the 201x201 map",
    )
    parser.add_argument("--demo", action="store_true", help="the whole demo manifest instead of one of its tasks")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to make the temporary folder (removed at the end)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_compression_", dir=args.dir))
    try:
        campaigns = args.campaign
        if not campaigns:
            (tmp / "map201.yaml").write_text(MAP_MANIFEST.format(output=tmp / "runs"))
            demo = REPO / "manifests" / "gpu_divergence.yaml" if args.demo else demo_slice(tmp)
            t0 = time.perf_counter()
            campaigns = [submit(demo, tmp / "runs"), submit(tmp / "map201.yaml", tmp / "runs")]
            print(f"ran {demo.stem} and the 201x201 map campaign in {time.perf_counter() - t0:.0f} s")
        for campaign in campaigns:
            measure(campaign, tmp / "work")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
