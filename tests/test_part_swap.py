"""The part-swap game (captum_sfam.demo.part_swap) and its benchmark setting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_sfam.app.bench import main as bench_main
from captum_sfam.app.bench.part_swap import (
    CHANCE,
    GRID,
    IDEAL,
    SimilarityScore,
    flip_share,
    mass_in_mask,
    peer_maps,
    pointing_in_mask,
)
from captum_sfam.demo.part_swap import (
    SCHEDULE,
    part_mask,
    paste_patch,
    recolour,
    render,
    shapes_game,
    verification_threshold,
)
from captum_sfam.demo.synthetic import ShapesFewShot
from captum_sfam.demo.trained import cosine_embedder, protonet

DATA = ShapesFewShot("test", seed=0)


@pytest.fixture(scope="module")
def models():
    return {"euclidean": protonet(), "cosine": cosine_embedder()}


@pytest.fixture(scope="module")
def games(models):
    return {m: shapes_game(net, m, 3, seed=1) for m, net in models.items()}


def _sim(model, a, b, metric):
    """Independent reference: the similarity written out."""
    with torch.no_grad():
        ea, eb = model(a), model(b)
    if metric == "cosine":
        return float((ea * eb).sum() / (ea.norm() * eb.norm()))
    return float(-((ea - eb) ** 2).sum())


@settings(max_examples=10)
@given(st.integers(0, len(DATA) - 1))
def test_render_is_the_dataset_image(index):
    image, (x0, y0, side) = render(DATA, index)
    assert torch.equal(image, DATA[index][0])
    box = DATA[index][2]
    assert x0 <= box[0] and box[2] <= x0 + side and y0 <= box[1] <= box[3] <= y0 + side


@settings(max_examples=12)
@given(st.integers(0, len(DATA) - 1), st.integers(0, 3), st.sampled_from(SCHEDULE))
def test_an_edit_stays_inside_its_mask(index, corner, fraction):
    image, place = render(DATA, index)
    mask = part_mask(DATA, index, place, corner, fraction)
    donor = DATA.classes[(DATA.label(index) + 1) % len(DATA.classes)]
    edited = recolour(image, mask, place, donor)
    assert torch.equal(edited[:, ~mask], image[:, ~mask])
    # the part lies on the object, inside its box
    x0, y0, side = place
    outside = torch.ones_like(mask)
    outside[y0 : y0 + side, x0 : x0 + side] = False
    assert not bool((mask & outside).any())


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_every_kept_triple_meets_the_criterion_minimally(models, games, metric):
    """s(p,m) >= t > s(p,n), s(twin,n) > s(twin,m) (reference similarities),
    pixels outside the masks untouched, and no earlier step of the schedule
    met the criterion."""
    model, game = models[metric], games[metric]
    assert game.triples and game.drawn >= len(game.triples)
    t = game.threshold
    for tr in game.triples:
        assert torch.equal(tr.twin[0][:, ~tr.mask], tr.probe[0][:, ~tr.mask])
        assert torch.equal(
            tr.non_mate[0][:, ~tr.mate_mask], tr.mate[0][:, ~tr.mate_mask]
        )
        assert bool((tr.twin != tr.probe).any())
        assert _sim(model, tr.probe, tr.mate, metric) >= t
        assert _sim(model, tr.probe, tr.non_mate, metric) < t
        s_n = _sim(model, tr.twin, tr.non_mate, metric)
        assert s_n > _sim(model, tr.twin, tr.mate, metric)
        twins, non_mates = tr.earlier
        for twin, non_mate in zip(twins, non_mates):  # no earlier step flipped
            rejected = _sim(model, tr.probe, non_mate[None], metric) < t
            s_n = _sim(model, twin[None], non_mate[None], metric)
            assert not (rejected and s_n > _sim(model, twin[None], tr.mate, metric))
        assert tr.scores["non_mate"] == pytest.approx(
            _sim(model, tr.probe, tr.non_mate, metric), rel=1e-4, abs=1e-5
        )


@settings(max_examples=20)
@given(st.lists(st.floats(-1, 1), min_size=4, max_size=12), st.integers(0, 2**16))
def test_the_threshold_minimises_false_accepts_plus_false_rejects(values, seed):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(len(values), 3, generator=gen).double()
    labels = torch.tensor([i % 2 for i in range(len(values))])
    t = verification_threshold(emb, labels, "euclidean")

    def cost(th):  # slow reference: every pair, written out
        gen_miss, imp_hit, n_gen, n_imp = 0, 0, 0, 0
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                s = -float(((emb[i] - emb[j]) ** 2).sum())
                if labels[i] == labels[j]:
                    n_gen, gen_miss = n_gen + 1, gen_miss + (s < th)
                else:
                    n_imp, imp_hit = n_imp + 1, imp_hit + (s >= th)
        return gen_miss / n_gen + imp_hit / n_imp

    sims = [-float(((emb[i] - emb[j]) ** 2).sum()) for i in range(len(values))
            for j in range(len(values))]  # fmt: skip
    candidates = sorted(sims) + [max(sims) + 1]
    assert cost(t) <= min(cost(c) for c in candidates) + 1e-12


masks = st.tuples(
    st.integers(0, 40), st.integers(0, 40), st.integers(2, 24), st.integers(2, 24)
)


def _mask(spec, size=64):
    y, x, h, w = spec
    out = torch.zeros(size, size, dtype=torch.bool)
    out[y : y + h, x : x + w] = True
    return out


@settings(max_examples=30)
@given(masks, st.integers(0, 2**16))
def test_the_mask_scores_best_on_pointing_and_mass(spec, seed):
    mask = _mask(spec)
    other = torch.randn(64, 64, generator=torch.Generator().manual_seed(seed))
    assert pointing_in_mask(mask.float(), mask)
    assert mass_in_mask(mask.float(), mask) == 1.0
    assert mass_in_mask(other, mask) <= 1.0
    assert mass_in_mask(-mask.float(), mask) == 0.0  # no positive mass


@settings(max_examples=30)
@given(masks, st.integers(0, 2**16))
def test_a_random_map_scores_near_chance(spec, seed):
    mask = _mask(spec)
    share = float(mask.float().mean())
    gen = torch.Generator().manual_seed(seed)
    masses = [mass_in_mask(torch.rand(64, 64, generator=gen), mask) for _ in range(20)]
    assert abs(np.mean(masses) - share) < 0.01 + 0.05 * share


def _slow_flip(model, metric, tr, saliency):
    """Reference: one blend at a time, ranking by a Python sort."""
    values = saliency.reshape(-1).tolist()
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    for q in GRID:
        chosen = torch.zeros(len(values), dtype=torch.bool)
        chosen[order[: int(round(q * len(values)))]] = True
        blend = torch.where(chosen.reshape(64, 64), tr.twin[0], tr.probe[0])[None]
        if _sim(model, blend, tr.non_mate, metric) > _sim(
            model, blend, tr.mate, metric
        ):
            return q
    return 1.0


@settings(max_examples=6)
@given(
    st.integers(0, 2**16), st.sampled_from(["euclidean", "cosine"]), st.integers(0, 2)
)
def test_flip_share_matches_a_slow_reference_and_the_mask_is_best(
    models, games, seed, metric, which
):
    model, game = models[metric], games[metric]
    tr = game.triples[which % len(game.triples)]
    gen = torch.Generator().manual_seed(seed)
    shifted = torch.roll(tr.mask.float(), shifts=(7, -9), dims=(0, 1))
    maps = [torch.rand(64, 64, generator=gen), shifted, (~tr.mask).float()]
    ideal = flip_share(model, metric, tr, tr.mask.float())
    share = float(tr.mask.float().mean())
    assert ideal <= min(q for q in GRID if q >= share)  # flips once the part is in
    for saliency in maps:
        value = flip_share(model, metric, tr, saliency)
        assert value == _slow_flip(model, metric, tr, saliency)
        assert ideal <= value
    assert flip_share(model, metric, tr, tr.mask.float()) == _slow_flip(
        model, metric, tr, tr.mask.float()
    )


@settings(max_examples=15)
@given(st.floats(0.1, 0.9), st.floats(0.1, 0.9), st.floats(0.05, 0.5))
def test_a_photo_edit_stays_inside_its_mask_through_the_views(cy, cx, fraction):
    gen = np.random.default_rng(0)
    photo = gen.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    donor = gen.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    edited, square = paste_patch(photo, donor, (cy, cx), fraction)
    assert np.array_equal(edited[~square], photo[~square])
    from captum_sfam.demo.part_swap import _views

    mask3 = np.repeat(square[..., None], 3, axis=-1).astype(np.uint8) * 255
    for view, original, mask in zip(_views(edited), _views(photo), _views(mask3)):
        inside = mask[0, 0] > -1
        assert torch.equal(view[0][:, ~inside], original[0][:, ~inside])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_the_pytorch_grad_cam_peer_runs_on_a_similarity_target(models, games, metric):
    model, tr = models[metric], games[metric].triples[0]
    maps = peer_maps(model, model.layer, metric, ig_steps=4)
    with torch.no_grad():
        refs = model(torch.cat([tr.mate, tr.non_mate]))
        out = model(tr.probe)[0]
    score = SimilarityScore(metric, refs[0:1], refs[1:2])(out)
    expected = _sim(model, tr.probe, tr.mate, metric) - _sim(
        model, tr.probe, tr.non_mate, metric
    )
    assert float(score) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    plain = maps["pytorch-grad-cam GradCAM"](tr.probe, tr.mate, tr.non_mate)
    contrast = maps["pytorch-grad-cam GradCAM (contrast)"](
        tr.probe, tr.mate, tr.non_mate
    )
    for m in (plain, contrast):
        assert m.shape == (64, 64) and bool(torch.isfinite(m).all())
    assert not torch.equal(plain, contrast)
    assert not any(p.grad is not None for p in model.parameters())


def test_the_part_swap_setting_prints_every_row(tmp_path, capsys):
    out = tmp_path / "bench"
    code = bench_main(
        ["--settings", "part-swap", "--swap-pairs", "1", "--swap-photos", "0",
         "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    printed = capsys.readouterr().out
    for key, contrast_rows in (("protonet", 3), ("cosine", 4)):
        rows = report["settings"][f"part-swap/{key}"]["methods"]
        assert list(rows)[-2:] == [CHANCE, IDEAL]
        assert sum(name.endswith("(contrast)") for name in rows) == contrast_rows + 3
        for name in (
            "SFAM",
            "SFAM (contrast)",
            "pytorch-grad-cam GradCAM (contrast)",
            "Captum LayerGradCam (contrast)",
            "RAM",
            "Grad-FAM",
        ):
            assert name in rows
        assert rows[IDEAL]["pointing"] == 1.0 and rows[IDEAL]["mass"] == 1.0
    assert (
        "part-swap game" in printed
        and "| ideal (the mask) | 100.0 | 100.0 |" in printed
    )
