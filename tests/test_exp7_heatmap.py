"""exp7: exp6.equal_logits → exp7.heatmap (faithful and fast) → exp7.zoom / exp7.randomness
through the real CLI on the tiny random Llama, then every stored cell checked against a plain
per-point loop (one full transformers forward per point at batch size 1) written here.

The campaign runs in float64: there the batched decoder stack is bitwise equal to one point at a
time (on this machine's MKL an fp32 GEMM's rows depend on M, so an fp32 batch check fails and
faithful mode falls back to batch size 1, the very path it would be compared with).  The test
asserts the recorded batch check passed, so the batched path really is what gets compared."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli, submit_campaign

from toolkit.numerics import grid
from toolkit.store.reader import Store

MANIFEST = """\
campaign: exp7-tiny
output: {output}
model: {{source: tiny-random-llama, dtype: float64, attn_implementation: eager}}
prompts: ["The capital of France is"]
targets: [cpu]
experiments:
  - name: exp6.equal_logits
    id: tie
    params: {{method: geometric, n_directions: 3, svd_iterations: 8, true_fp64: false}}  # exp7's plain .double()
  - name: exp7.heatmap
    id: heatmap
    needs: [tie]
    params: {{planes: [[1, 2], [1, -1]], e_min: -1.0e-7, e_max: 1.0e-7, step: 2.0e-8, batch_size: 8}}
  - name: exp7.heatmap
    id: fast
    needs: [tie]
    params: {{planes: [[2, 3]], e_min: -1.0e-7, e_max: 1.0e-7, step: 2.0e-8, mode: fast, batch_size: 16,
              agreement_sample: 24, seed: 3}}
  - name: exp7.zoom
    id: zoom
    needs: [heatmap]
    params: {{e1_min: -4.0e-8, e1_max: 4.0e-8, e2_min: 0.0, e2_max: 4.0e-8, recompute_steps: 5, maps: [1]}}
  - name: exp7.randomness
    id: randomness
    needs: [heatmap, fast]
    params: {{n_perm: 99}}
"""


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """Run the whole chain once; yield the campaign folder."""
    # no_plot: the exp7 figures are made (and checked) from the store in test_zoom_and_randomness_read_the_store
    yield submit_campaign(tmp_path_factory.mktemp("exp7"), MANIFEST, "exp7.yaml", no_plot=True).folder


def _tiny(dtype: str):
    from toolkit.manifest import ModelSpec, Numerics
    from toolkit.models.loading import load

    model, _, _ = load(ModelSpec("tiny-random-llama", device="cpu"), Numerics(dtype=dtype, attn_implementation="eager"))
    return model


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    """The tiny random Llama in float32 (unit tests of the grid helpers)."""
    return _tiny("float32")


@pytest.fixture(scope="module")
def tiny64(one_torch_thread):
    """The same model in float64, the campaign's dtype."""
    return _tiny("float64")


def by_id(store: Store, exp_id: str):
    runs = [r for r in store.runs() if r.exp_id == exp_id]
    assert len(runs) == 1
    return runs[0]


def plain_loop(model, group) -> tuple[np.ndarray, np.ndarray]:
    """The per-point reference, with plain torch/transformers calls only (no toolkit helper): each
    point formed on its own (float64 sum, one rounding to the model dtype), then one full forward of the prompt
    prefix + that point as `inputs_embeds` [1, T, D], no cache, lm_head on the last row only."""
    dtype = model.dtype
    embeds = torch.from_numpy(group["embeds"][()]).to(dtype)
    x0, v1, v2 = (torch.from_numpy(group[k][()]) for k in ("x0", "v1", "v2"))
    e1, e2, (a, b) = group["e1"][()], group["e2"][()], group["pair"][()]
    gap, top = np.empty((len(e1), len(e2))), np.empty((len(e1), len(e2)), dtype=np.int64)
    for i, s in enumerate(e1):
        for j, t in enumerate(e2):
            x = ((x0 + float(s) * v1) + float(t) * v2).to(dtype)
            inputs = torch.cat([embeds[:-1], x[None]], dim=0)[None]
            with torch.no_grad():
                logits = model(inputs_embeds=inputs, use_cache=False, logits_to_keep=1).logits[0, -1]
            gap[i, j] = float(logits[a].double() - logits[b].double())
            top[i, j] = int(torch.argmax(logits))
    return gap, top


def test_faithful_heatmap_equals_the_per_point_loop_in_every_cell(campaign, tiny64):
    with Store(campaign / "store.h5") as store:
        run = by_id(store, "heatmap")
        assert run.attrs["mode"] == "faithful" and "ONE rounding" in run.attrs["arithmetic_description"]
        assert sorted(run.group["maps"]) == ["000", "001"]
        assert list(run.group["maps/001"].attrs["directions"]) == [1, 3]  # -1 = the last of 3 stored
        for key in ("000", "001"):
            group = run.group[f"maps/{key}"]
            assert group["gap"].shape == (11, 11) and group["e1"][5] == 0.0  # symmetric range: exact centre
            check = json.loads(group.attrs["batch_check"])  # batched evaluation only after a passed check
            assert check == {
                "requested": 8,
                "used": 8,
                "equal": True,
                "sample": 8,
                "max_abs_diff": 0.0,
                "note": "bounded head: pair logits and argmax of 8 points, and every vocabulary row (each with one of "
                "them) through 64-row GEMV blocks, compared with point_logits",
            }
            assert group.attrs["batch_size_used"] == 8
            # linear layers on the last row only, then the bounded head
            assert group.attrs["evaluation_path"] == grid.SHARED_HEAD_PATH
            gap, top = plain_loop(tiny64, group)
            assert np.array_equal(group["gap"][()], gap)  # bitwise, all 121 cells
            assert np.array_equal(group["argmax"][()], top)
            assert group.attrs["n_distinct_inputs"] == len(np.unique(group["distinct"][()]))
            tie = [r for r in store.runs("exp6.equal_logits")][0]
            assert group.attrs["centre_gap"] == tie["prompts/000/gap"]  # same primitive as exp6's certificate
            assert bool(group.attrs["centre_gap_equals_upstream"])
            assert np.array_equal(group["x0"][()], tie["prompts/000/x0"])


def test_fast_mode_reports_agreement_consistent_with_its_sample(campaign, tiny64):
    with Store(campaign / "store.h5") as store:
        run = by_id(store, "fast")
        assert run.attrs["mode"] == "fast" and "K/V cache" in run.attrs["evaluation_path"]
        group = run.group["maps/000"]
        sample = group["agreement"]
        faithful, fast = sample["faithful_gap"][()], sample["fast_gap"][()]
        points = sample["point_index"][()]
        assert len(points) == 24 and len(set(points.tolist())) == 24
        assert np.array_equal(group["gap"][()].ravel()[points], fast)
        rate = float(np.mean(np.sign(faithful) == np.sign(fast)))
        assert group.attrs["agreement_sign_agreement"] == rate
        assert group.attrs["agreement_max_abs_gap_diff"] == float(np.abs(faithful - fast).max())
        reference, _ = plain_loop(tiny64, group)
        assert np.array_equal(reference.ravel()[points], faithful)  # the stored "faithful" values are real
        assert sample.attrs["faithful_path"] == grid.SHARED_HEAD_PATH  # computed in batches after the check


def tiny_plane(model, seed: int = 1):
    """Prefix, x0 (the prompt's own last embedding) and two seeded orthonormal float64 directions."""
    embeds = model.get_input_embeddings()(torch.tensor([[1, 422, 3575, 282, 4649]])).detach()
    directions = torch.linalg.qr(
        torch.randn(64, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )[0].T
    return embeds[:, :-1], embeds[0, -1], directions[0].contiguous(), directions[1].contiguous()


def test_dedup_below_the_ulp_scale(tiny):
    prefix, x0, v1, v2 = tiny_plane(tiny)
    e = grid.axis(-1e-9, 1e-9, 2e-10)  # below ulp32 of most of x0's entries (|x0_i| >= 8e-4)
    points = grid.form_points(x0, v1, v2, e, e, "fp64_then_round")
    x, d1, d2 = x0.double().numpy(), v1.numpy(), v2.numpy()
    rows = ((x[None, None] + e[:, None, None] * d1) + e[None, :, None] * d2).astype(np.float32)
    expected = len({r.tobytes() for r in rows.reshape(-1, x.size)})  # numpy, independent of torch
    assert np.array_equal(points.numpy(), rows.reshape(-1, x.size))  # same arithmetic, same bits
    merged = grid.run_grid(tiny, prefix, points, (5, 7), "faithful", batch_size=4)
    assert merged.n_distinct == expected and 1 < expected < len(e) ** 2
    assert len(np.unique(merged.distinct)) == expected
    plain = grid.run_grid(tiny, prefix, points, (5, 7), "faithful", batch_size=1, dedup=False)
    assert plain.n_distinct == len(e) ** 2 and plain.check.used == 1
    assert np.array_equal(merged.gap, plain.gap) and np.array_equal(merged.argmax, plain.argmax)


def test_zoom_and_randomness_read_the_store(campaign):
    with Store(campaign / "store.h5") as store:
        zoom = by_id(store, "zoom")
        view = zoom.group["views/000"].attrs
        assert list(view["e1_index"]) == [3, 7] and list(view["e2_index"]) == [5, 7]  # values inside the window
        sub = zoom.group["maps/000"]
        assert np.array_equal(sub["e2"][()], grid.axis_n(0.0, 4e-8, 5)) and sub["gap"].shape == (5, 5)
        source = by_id(store, "heatmap").group["maps/001"]
        assert np.array_equal(sub["v2"][()], source["v2"][()])
        assert sub["gap"][0, 0] == source["gap"][3, 5]  # (-4e-8, 0) lies on both grids: same input, same value
        randomness = by_id(store, "randomness")
        assert len(randomness.group["maps"]) == 3  # 2 faithful maps + 1 fast map
        for key in randomness.group["maps"]:
            attrs = randomness.group[f"maps/{key}"].attrs
            assert 0 < attrs["moran_p_two_sided"] <= 1 and attrs["regions"] >= 1
            assert len(randomness.group[f"maps/{key}/moran_null"]) == 99
        # figures from the store only (the modules' plot functions, in this process to save a start-up)
        from toolkit.experiments.exp7 import heatmap as heatmap_module
        from toolkit.experiments.exp7 import randomness as randomness_module
        from toolkit.experiments.exp7 import zoom as zoom_module

        out = campaign / "figures-exp7"
        out.mkdir()
        paths = heatmap_module.plot(by_id(store, "heatmap"), out) + zoom_module.plot(zoom, out)
        paths += randomness_module.plot(randomness, out)
        assert len(paths) == 2 + 2 + 4 and zoom.task_id in paths[2].name
        assert all(p.stat().st_size > 10_000 for p in paths)
    names = {p.name for p in out.iterdir()}
    assert any(n.startswith("exp7_heatmap_") for n in names) and any(n.endswith("_summary.png") for n in names)
    assert any(n.endswith("_stored.png") for n in names) and any(n.endswith("_recomputed.png") for n in names)


def test_batched_path_that_is_not_bitwise_falls_back_to_one(tiny, monkeypatch):
    """Batched final rows one ulp off the one-point forward's: every batched path's check (bounded
    head, per-point head, with and without the shared prefix) must catch it."""
    from toolkit.numerics import grid_faithful

    prefix, x0, v1, v2 = tiny_plane(tiny)
    e = grid.axis_n(-1e-6, 1e-6, 4)
    points = grid.form_points(x0, v1, v2, e, e, "fp64_then_round")
    plain_rows = grid.final_rows

    def off_by_one_ulp(model, prefix, xs):
        rows = plain_rows(model, prefix, xs)
        return torch.nextafter(rows, torch.full_like(rows, float("inf")))

    monkeypatch.setattr(grid, "final_rows", off_by_one_ulp)
    monkeypatch.setattr(grid_faithful, "final_rows", off_by_one_ulp)
    result = grid.run_grid(tiny, prefix, points, (5, 7), "faithful", batch_size=8)
    assert result.check is not None and not result.check.equal and result.batch_size == 1
    assert result.path == grid.POINT_PATH
    reference = [
        float(grid.point_logits(tiny, prefix, x)[5].double() - grid.point_logits(tiny, prefix, x)[7].double())
        for x in points
    ]
    assert np.array_equal(result.gap, np.array(reference))


def test_a_bounded_head_off_by_one_ulp_falls_back_to_the_per_point_head(tiny, monkeypatch):
    """The bounded head's own check must refuse it when its blocks do not reproduce the GEMV."""
    from toolkit.numerics import exact_head

    prefix, x0, v1, v2 = tiny_plane(tiny)
    e = grid.axis_n(-1e-6, 1e-6, 4)
    points = grid.form_points(x0, v1, v2, e, e, "fp64_then_round")
    plain_rows = exact_head.BoundedHead.gemv_rows

    def off_by_one_ulp(self, row, index):
        values = plain_rows(self, row, index)
        return torch.nextafter(values, torch.full_like(values, float("inf")))

    monkeypatch.setattr(exact_head.BoundedHead, "gemv_rows", off_by_one_ulp)
    result = grid.run_grid(tiny, prefix, points, (5, 7), "faithful", batch_size=8)
    assert result.path == grid.SHARED_PATH and result.check is not None and result.check.equal
    assert result.check.note.startswith("bounded head refused by its check at batch 8")  # ", tiled" where needed
    reference = [grid.point_logits(tiny, prefix, x) for x in points]
    assert np.array_equal(result.gap, np.array([float(r[5].double() - r[7].double()) for r in reference]))
    assert np.array_equal(result.argmax, np.array([int(torch.argmax(r)) for r in reference]))


def test_params_are_validated(write_manifest):
    bad = write_manifest("""\
        campaign: bad
        model: {source: tiny-random-llama}
        experiments:
          - name: exp7.heatmap
            params: {planes: [[1, 1]], e_min: -1.0e-8, e_max: 1.0e-8, step: 3.0e-9}
          - name: exp7.zoom
            id: zoom
            params: {e1_min: 1.0, e1_max: 0.0, recompute_steps: -1}
          - name: exp7.randomness
            id: rand
            params: {window: 0}
        """)
    result = run_cli("validate", str(bad))
    assert result.code == 2
    for fragment in (
        "params.planes: entry 0 must be two different non-zero 1-based indices",
        "params.step: step 3e-09 does not divide the range",
        "params.e1_max: must be >= e1_min",
        "params.recompute_steps: must be between 0 and 4001",
        "params.window: must be between 1 and 101",
    ):
        assert fragment in result.err, result.err
    shipped = run_cli("validate", str(REPO / "manifests" / "tipping_point.yaml"))
    assert shipped.code == 0, shipped.err


def test_zoom_window_outside_the_grid_is_an_error():
    from toolkit.experiments.exp7.zoom import window_indices

    values = grid.axis(-1e-8, 1e-8, 2e-9)
    assert window_indices(values, -4e-9, 4e-9, "e1") == (3, 7)
    assert window_indices(values, 1e-8, 1e-8, "e1") == (10, 10)  # a bound on the last value is inside
    with pytest.raises(
        ValueError,
        match=r"window e2 = \[2e-08, 3e-08\] holds no stored grid value; the grid "
        r"spans \[-1e-08, 1e-08\] in steps of 2e-09",
    ):
        window_indices(values, 2e-8, 3e-8, "e2")


def test_plane_indices_resolve_against_the_stored_directions():
    from toolkit.experiments.exp7.heatmap import resolve_plane

    assert resolve_plane((1, -1), 10) == (0, 9) and resolve_plane((2, 10), 10) == (1, 9)
    with pytest.raises(ValueError, match=r"plane \[1, 12\]: direction 12 does not exist, the upstream run stores 10"):
        resolve_plane((1, 12), 10)
    with pytest.raises(ValueError, match=r"plane \[3, -1\] names direction 3 twice with 3 stored directions"):
        resolve_plane((3, -1), 3)


def test_upstream_arithmetic_matches_a_numpy_float32_emulation():
    rng = np.random.default_rng(5)
    x0 = (rng.standard_normal(48) * 0.02).astype(np.float32)
    v1, v2 = rng.standard_normal(48), rng.standard_normal(48)
    e = grid.axis(-1e-6, 1e-6, 5e-7)
    got = grid.form_points(torch.from_numpy(x0), v1, v2, e, e, "dtype_sequential").numpy()
    f32 = np.float32
    want = [(x0 + f32(a) * v1.astype(f32)) + f32(b) * v2.astype(f32) for a in e for b in e]  # float32 ops
    assert np.array_equal(got, np.array(want))
    once = grid.form_points(torch.from_numpy(x0), v1, v2, e, e, "fp64_then_round").numpy()
    assert not np.array_equal(got, once)  # the two recorded arithmetics reach different inputs


def test_balanced_batches_reuse_the_checked_batch_and_equal_plain_forwards(tiny, monkeypatch):
    """25 points at batch_size 16: balanced batches (two of 13, not 16 and a 16-row batch holding 9, where
    13 rows round like the one-point forward on this machine; else the row-class probe's smaller size,
    again without a wasted batch); the first, computed by the check, is not recomputed; every value
    still equals a plain forward of that point."""
    from toolkit.numerics import exact_head

    cases = ((64, 961), (64, 10201), (8, 121), (64, 1), (64, 65), (1, 5), (64, 0))
    assert [grid.balanced_batch(b, n) for b, n in cases] == [61, 64, 8, 1, 33, 1, 1]
    prefix, x0, v1, v2 = tiny_plane(tiny)
    e = grid.axis_n(-1e-6, 1e-6, 5)
    points = grid.form_points(x0, v1, v2, e, e, "fp64_then_round")
    calls = []
    real_values = exact_head.BoundedHead.values

    def counted(self, rows, pair):
        calls.append(rows.shape[0])
        return real_values(self, rows, pair)

    monkeypatch.setattr(exact_head.BoundedHead, "values", counted)
    result = grid.run_grid(tiny, prefix, points, (5, 7), "faithful", batch_size=16)
    size = result.batch_size
    assert result.n_distinct == 25 and 2 <= size <= 13 and result.path == grid.SHARED_HEAD_PATH
    assert size == grid.balanced_batch(size, 25)  # as few rows of padding as that many batches allow
    assert calls == [size] * -(-25 // size)  # the check's batch, then the rest: the first is not computed twice
    gaps, tops = [], []
    for x in points:
        inputs = torch.cat([prefix[0], x[None]], dim=0)[None]
        with torch.no_grad():
            logits = tiny(inputs_embeds=inputs, use_cache=False, logits_to_keep=1).logits[0, -1]
        gaps.append(float(logits[5].double() - logits[7].double()))
        tops.append(int(torch.argmax(logits)))
    assert np.array_equal(result.gap, np.array(gaps)) and np.array_equal(result.argmax, np.array(tops))


def test_fast_mode_equals_the_cached_path_with_a_per_point_head(tiny):
    """Fast mode's values, from plain transformers calls: the prefix K/V cache of rows 0..T-2 at
    batch 1 repeated for 8 points, their last rows as [8, 1, D] against it, then each point's final
    row through the whole head as a [1, 1, D] GEMV (argmax and the pair's logits)."""
    from transformers import DynamicCache

    prefix, x0, v1, v2 = tiny_plane(tiny, seed=3)
    e = grid.axis(-4.0, 4.0, 2.0)  # 25 points, far enough apart that the argmax changes
    points = grid.form_points(x0, v1, v2, e, e, "fp64_then_round")[:24]  # 3 full batches of 8
    pair = (5, 7)
    result = grid.run_grid(tiny, prefix, points, pair, "fast", batch_size=8, dedup=False, agreement_sample=4)
    assert result.path == grid.FAST_HEAD_PATH
    weight = tiny.get_output_embeddings().weight
    gap, top = [], []
    with torch.no_grad():
        for start in range(0, 24, 8):
            cache = DynamicCache(config=tiny.config)
            tiny(inputs_embeds=prefix, cache=cache, use_cache=True)
            cache.batch_repeat_interleave(8)
            rows = tiny.model(
                inputs_embeds=points[start : start + 8, None], cache=cache, use_cache=True
            ).last_hidden_state
            for b in range(8):
                logits = torch.nn.functional.linear(rows[b : b + 1, -1:], weight)[0, 0]
                gap.append(float(logits[pair[0]].double() - logits[pair[1]].double()))
                top.append(int(torch.argmax(logits)))
    assert np.array_equal(result.gap, np.array(gap))
    assert np.array_equal(result.argmax, np.array(top)) and len(set(top)) >= 2, set(top)
