"""Benchmark: `toolkit.store.gather.gather` against a plain copy of the same shard files.

A campaign folder is created in a temporary directory with N shards (default 200), each written
by `toolkit.store.shard.open_shard` (the workers' code path) and holding about `--mb-per-shard`
MB (default 2) of random float32 data split over `--datasets` datasets (default 4).  Then:

(a) full gather: `gather(campaign_dir)` with no store.h5 yet — copies every shard into
    store.h5, re-reads every dataset and checks its sha256 against the shard's, fsyncs and renames;
(b) naive baseline: `shutil.copyfile` of each shard file into another folder, plus an `os.fsync`
    of each copy and of the folder (gather fsyncs too, so the baseline does the same);
(c) gather with nothing new (store.h5 already up to date): should be near-instant;
(d) incremental gather: 10 more shards are written, then `gather` appends them to store.h5 in
    place (`toolkit.store.journal`), against (d') a plain copy + fsync of those 10 shard files;
(e) the same at scale (`--big-gb`, default 4; 0 skips it): a second campaign whose store holds
    about that many GB (shards of `--big-mb-per-shard` MB, default 40), gathered in full (a second
    throughput figure), then +10 shards of `--mb-per-shard` MB appended, against copying them.

The page cache cannot be dropped without root, so every measurement runs warm: right after the
shard files were written (they are in memory).  Before each timed step an untimed `os.sync()`
writes back what earlier steps left dirty, so neither side pays for the other's writes.
Reported: MB/s of (a) and (b) over the shards' total file size, their ratio, the seconds of (c)
and (d), and the ratio of each incremental gather to the plain copy of its 10 shards (goal: at
most 2).  Exits 1 if a store does not hold the tasks it should, or if a gather reports unreadable
shards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

INCREMENT = 10


def task_id(i: int) -> str:
    """A 16-hex-digit id, like the planner's."""
    return hashlib.sha256(f"bench-gather-{i}".encode()).hexdigest()[:16]


def write_shards(
    campaign_dir: Path, first: int, count: int, mb_per_shard: float, datasets: int, seed: int, cheap: bool = False
) -> list[Path]:
    """Write shards `first`..`first+count-1` with `open_shard`, each ~mb_per_shard MB of float32
    (random; `cheap`: one random block repeated, as fast to make as to write); returns their paths."""
    import numpy as np

    from toolkit.store.campaign_dir import CampaignDir
    from toolkit.store.shard import open_shard

    rng = np.random.default_rng(seed + first)
    per_dataset = max(1, int(mb_per_shard * 1e6 / 4 / datasets))  # float32 values per dataset
    block = rng.standard_normal(min(per_dataset, 1 << 20), dtype=np.float32) if cheap else None
    for i in range(first, first + count):
        attrs = {"experiment": "bench", "exp_id": "bench", "target": "cpu", "repeat": i, "params": {}, "numerics": {}}
        with open_shard(campaign_dir, task_id(i), attrs) as root:
            for d in range(datasets):
                if block is not None:
                    data = np.resize(block, per_dataset)
                    data[0] = i * datasets + d  # every dataset differs
                else:
                    data = rng.standard_normal(per_dataset, dtype=np.float32)
                root.create_dataset(f"data/d{d}", data=data)
    return [CampaignDir(campaign_dir).shard_path(task_id(i)) for i in range(first, first + count)]


def plain_copy(files: list[Path], dest: Path) -> None:
    """The naive baseline: copy each file, fsync each copy, fsync the folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in files:
        target = dest / src.name
        shutil.copyfile(src, target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def timed_gather(campaign_dir: Path) -> tuple[float, Any]:
    from toolkit.store.gather import gather

    os.sync()  # (untimed) no write-back left over from the previous step lands on this one
    t0 = time.perf_counter()
    report = gather(campaign_dir)
    elapsed = time.perf_counter() - t0
    if report.bad_shards:
        print(f"bench_gather: FAIL: unreadable shards: {report.bad_shards}", file=sys.stderr)
        raise SystemExit(1)
    return elapsed, report


def stored_tasks(store: Path) -> int:
    import h5py

    with h5py.File(store, "r", locking=False) as handle:
        return len(handle["tasks"])


def check_count(store: Path, expected: int, when: str) -> None:
    found = stored_tasks(store)
    if found != expected:
        print(
            f"bench_gather: FAIL: after {when}, {store.name} holds {found} tasks, expected {expected}", file=sys.stderr
        )
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=200, help="number of shards N (default 200)")
    parser.add_argument("--mb-per-shard", type=float, default=2.0, help="MB of float32 data per shard (default 2)")
    parser.add_argument("--datasets", type=int, default=4, help="datasets per shard (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the data")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to create the temporary folder (default: the system temp dir); it is removed at the end",
    )
    parser.add_argument(
        "--big-gb", type=float, default=4.0, help="GB of the second, larger store for (e) (default 4; 0 skips it)"
    )
    parser.add_argument(
        "--big-mb-per-shard", type=float, default=40.0, help="MB per shard of the larger store (default 40)"
    )
    args = parser.parse_args()
    if args.shards < 1 or args.mb_per_shard <= 0 or args.datasets < 1:
        parser.error("--shards and --datasets must be >= 1 and --mb-per-shard > 0")

    from toolkit.store.campaign_dir import CampaignDir

    tmp = Path(tempfile.mkdtemp(prefix="bench_gather_", dir=args.dir))
    try:
        campaign = tmp / "bench-gather"
        campaign.mkdir()
        store = CampaignDir(campaign).store_path

        t0 = time.perf_counter()
        write_shards(campaign, 0, args.shards, args.mb_per_shard, args.datasets, args.seed)
        write_s = time.perf_counter() - t0
        files = sorted(CampaignDir(campaign).completed_shards().values())
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"setup: {len(files)} shards x {args.datasets} float32 datasets, {total_mb:.1f} MB in all "
            f"({total_mb / len(files):.2f} MB each), written with open_shard in {write_s:.2f} s; "
            f"page cache not dropped (needs root): every measurement runs warm, right after the writes"
        )

        plain_s = _time(lambda: plain_copy(files, tmp / "plain-copy"))
        shutil.rmtree(tmp / "plain-copy")
        full_s, full = timed_gather(campaign)
        if len(full.added) != args.shards:
            print(
                f"bench_gather: FAIL: full gather added {len(full.added)} tasks, expected {args.shards}",
                file=sys.stderr,
            )
            raise SystemExit(1)
        check_count(store, args.shards, "the full gather")
        store_mb = store.stat().st_size / 1e6
        full_mbs, plain_mbs = total_mb / full_s, total_mb / plain_s
        print(
            f"(a) full gather:  {args.shards} shards, {total_mb:.1f} MB in {full_s:.2f} s = {full_mbs:.1f} MB/s "
            f"(store.h5 {store_mb:.1f} MB)"
        )
        print(
            f"(b) plain copy:   {len(files)} files, {total_mb:.1f} MB in {plain_s:.2f} s = {plain_mbs:.1f} MB/s "
            f"(shutil.copyfile + fsync each)"
        )
        print(f"gather/plain-copy throughput = {full_mbs / plain_mbs:.2f}")

        noop_s, noop = timed_gather(campaign)
        if noop.added or noop.replaced:
            print(
                f"bench_gather: FAIL: a gather with nothing new added {len(noop.added)} and replaced "
                f"{len(noop.replaced)} tasks",
                file=sys.stderr,
            )
            raise SystemExit(1)
        print(f"(c) gather, nothing new: {noop_s:.3f} s ({noop.unchanged} tasks already in the store)")

        incremental(campaign, tmp, args.shards, args.mb_per_shard, args.datasets, args.seed, "(d)")
        if args.big_gb > 0:
            big(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def incremental(
    campaign: Path, tmp: Path, stored: int, mb_per_shard: float, datasets: int, seed: int, tag: str
) -> None:
    """+INCREMENT shards appended to a store of `stored` tasks, against a plain copy of those files."""
    new = write_shards(campaign, stored, INCREMENT, mb_per_shard, datasets, seed)
    copy_s = _time(lambda: plain_copy(new, tmp / "plain-copy-new"))
    shutil.rmtree(tmp / "plain-copy-new")
    inc_s, inc = timed_gather(campaign)
    if len(inc.added) != INCREMENT:
        print(
            f"bench_gather: FAIL: incremental gather added {len(inc.added)} tasks, expected {INCREMENT}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    store = campaign / "store.h5"
    check_count(store, stored + INCREMENT, "the incremental gather")
    new_mb = sum(p.stat().st_size for p in new) / 1e6
    print(
        f"{tag} incremental gather, {INCREMENT} new shards ({new_mb:.1f} MB) into a store of {stored} tasks: "
        f"{inc_s:.2f} s (store.h5 now {store.stat().st_size / 1e6:.1f} MB)"
    )
    print(
        f"{tag}' plain copy + fsync of those {INCREMENT} shard files: {copy_s:.2f} s; "
        f"incremental gather / plain copy = {inc_s / copy_s:.2f} (goal <= 2)"
    )


def big(tmp: Path, args: argparse.Namespace) -> None:
    """(e): the full and the incremental gather on a store of about `--big-gb` GB."""
    campaign = tmp / "bench-gather-big"
    campaign.mkdir()
    count = max(1, round(args.big_gb * 1e3 / args.big_mb_per_shard))
    t0 = time.perf_counter()
    files = write_shards(campaign, 0, count, args.big_mb_per_shard, args.datasets, args.seed, cheap=True)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"(e) setup: {count} shards, {total_mb / 1e3:.2f} GB, written in {time.perf_counter() - t0:.1f} s")
    plain_s = _time(lambda: plain_copy(files, tmp / "plain-copy-big"))
    shutil.rmtree(tmp / "plain-copy-big")
    full_s, _ = timed_gather(campaign)
    check_count(campaign / "store.h5", count, "the big full gather")
    print(
        f"(e) full gather {total_mb / full_s:.1f} MB/s, plain copy {total_mb / plain_s:.1f} MB/s: "
        f"gather/plain-copy throughput = {plain_s / full_s:.2f}"
    )
    incremental(campaign, tmp, count, args.mb_per_shard, args.datasets, args.seed, "(e)")


def _time(func: Any) -> float:
    os.sync()  # as in timed_gather
    t0 = time.perf_counter()
    func()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
