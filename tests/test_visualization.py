"""Figures show the image a person sees: normalised model inputs, any range."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from captum_sfam.images import to_display
from captum_sfam.visualization import compare_methods, visualize_pair

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture
def photo():
    """A (16, 16, 3) image in [0, 1] with distinct, saturated channels."""
    y, x = np.mgrid[0:16, 0:16] / 15.0
    return np.stack([x, y, 1 - x], axis=-1)


def _normalise(image_hwc):
    """The model input: (3, H, W) tensor, ImageNet-normalised."""
    x = torch.from_numpy(image_hwc).permute(2, 0, 1).float()
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def _drawn(ax):
    """The RGB array an axis shows (the first image drawn on it)."""
    return np.asarray(ax.get_images()[0].get_array(), dtype=np.float64)


def _drawn_grey(ax):
    """The grey image Captum's blended heat map draws under the map, in [0, 1]."""
    return _drawn(ax) / 255.0  # Captum draws the mean of the uint8 image


def _maps(k=1):
    return torch.rand(1, 4, 4), torch.rand(k, 1, 4, 4)


def test_visualize_pair_denormalises_with_mean_and_std(photo):
    q_map, s_maps = _maps()
    x = _normalise(photo)
    assert x.min() < 0 and x.max() > 1  # what used to be drawn black / clipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = visualize_pair(x, q_map, [x], None, mean=MEAN, std=STD)
    np.testing.assert_allclose(_drawn(fig.axes[0]), photo, atol=1e-5)
    np.testing.assert_allclose(_drawn(fig.axes[2]), photo, atol=1e-5)
    # the blended heat-map panel shows the same image (Captum draws its grey)
    np.testing.assert_allclose(_drawn_grey(fig.axes[1]), photo.mean(-1), atol=0.01)


def test_visualize_pair_with_a_denormalize_callable_and_a_batch_of_one(photo):
    q_map, s_maps = _maps()
    x = _normalise(photo)

    def denormalize(t):
        return t * torch.tensor(STD).view(-1, 1, 1) + torch.tensor(MEAN).view(-1, 1, 1)

    fig = visualize_pair(x[None], q_map, [x], s_maps, denormalize=denormalize)
    np.testing.assert_allclose(_drawn(fig.axes[0]), photo, atol=1e-5)
    fig = visualize_pair(x[None], q_map, [x[None]], mean=MEAN, std=STD)
    np.testing.assert_allclose(_drawn(fig.axes[2]), photo, atol=1e-5)


def test_an_out_of_range_image_without_normalisation_is_min_maxed_with_a_warning(photo):
    q_map, _ = _maps()
    x = _normalise(photo)
    with pytest.warns(UserWarning, match=r"outside \[0, 1\].*mean=/std=.*denormalize="):
        fig = visualize_pair(x, q_map, [x])
    shown = _drawn(fig.axes[0])
    expected = (x.permute(1, 2, 0).numpy() - float(x.min())) / float(x.max() - x.min())
    np.testing.assert_allclose(shown, expected, atol=1e-5)
    assert shown.min() == pytest.approx(0) and shown.max() == pytest.approx(1)
    # never a black panel: most pixels are neither black nor clipped white
    assert 0.2 < shown.mean() < 0.8
    # a float image in [0, 255] is not divided into black either
    with pytest.warns(UserWarning, match="outside"):
        fig = visualize_pair(photo * 255, q_map, [photo])
    np.testing.assert_allclose(_drawn(fig.axes[0]), photo, atol=1e-6)


def test_images_in_range_and_integer_images_are_drawn_unchanged(photo):
    q_map, _ = _maps()
    as_uint8 = (photo * 255).round().astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = visualize_pair(
            photo, q_map, [as_uint8, torch.from_numpy(photo).permute(2, 0, 1)]
        )
    np.testing.assert_allclose(_drawn(fig.axes[0]), photo)
    np.testing.assert_allclose(_drawn(fig.axes[2]), as_uint8 / 255.0)
    np.testing.assert_allclose(_drawn(fig.axes[3]), photo)
    grey = photo[..., 0]
    fig = visualize_pair(grey, q_map, [grey[None]])
    np.testing.assert_allclose(_drawn(fig.axes[0]), np.repeat(grey[..., None], 3, -1))
    np.testing.assert_allclose(_drawn(fig.axes[2]), np.repeat(grey[..., None], 3, -1))


def test_wrong_normalisation_is_warned_about(photo):
    q_map, _ = _maps()
    x = _normalise(photo) * 10
    with pytest.warns(UserWarning, match=r"check that mean=/std="):
        visualize_pair(x, q_map, [x], mean=MEAN, std=STD)


def test_compare_methods_takes_the_normalisation(photo, tmp_path):
    x = _normalise(photo)
    other = _normalise(photo[::-1].copy())
    results = {
        "A": (torch.rand(1, 4, 4), None),
        "B": (torch.rand(1, 4, 4), torch.rand(2, 1, 4, 4)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = compare_methods(
            x, [x, other], results, mean=MEAN, std=STD, path=tmp_path / "c.png"
        )
    assert (tmp_path / "c.png").stat().st_size > 1000
    axes = np.asarray(fig.axes).reshape(2, 3)
    np.testing.assert_allclose(_drawn(axes[0, 1]), photo, atol=1e-5)
    np.testing.assert_allclose(_drawn(axes[0, 2]), photo[::-1], atol=1e-5)
    np.testing.assert_allclose(_drawn_grey(axes[1, 0]), photo.mean(-1), atol=0.01)
    fig = compare_methods(
        x,
        [x],
        {"A": (torch.rand(1, 4, 4), None)},
        denormalize=lambda t: (
            t * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
        ),
    )
    assert _drawn(fig.axes[1]).std() > 0.1
    with pytest.warns(UserWarning, match="mean="):
        fig = compare_methods(x, [x], {"A": (torch.rand(1, 4, 4), None)})
    assert _drawn(fig.axes[1]).mean() > 0.2


def test_normalisation_arguments_are_checked(photo):
    q_map, _ = _maps()
    x = _normalise(photo)
    with pytest.raises(ValueError, match="either mean=/std= or denormalize="):
        visualize_pair(x, q_map, [x], mean=MEAN, std=STD, denormalize=lambda t: t)
    with pytest.raises(ValueError, match="go together"):
        visualize_pair(x, q_map, [x], mean=MEAN)
    with pytest.raises(ValueError, match="integer image"):
        visualize_pair((photo * 255).astype(np.uint8), q_map, [x], mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="expected an image"):
        visualize_pair(torch.rand(2, 3, 8, 8), q_map, [x])


def test_to_display_undoes_the_normalisation_in_any_layout(photo):
    x = _normalise(photo)
    for image in (x, x[None], x.permute(1, 2, 0), x.numpy()):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            shown = to_display(image, MEAN, STD)
        assert shown.shape == (16, 16, 3) and shown.dtype == np.float64
        np.testing.assert_allclose(shown, photo, atol=1e-6)
    # one number for every channel, and a callable instead of mean/std
    np.testing.assert_allclose(to_display((x * 0 - 1), [0.5], [0.5]), 0.0)
    np.testing.assert_allclose(to_display(x, denormalize=lambda t: t * 0 + 0.25), 0.25)
    # integer images are divided by their type's maximum, booleans kept as 0/1
    deep = (photo * 65535).round().astype(np.uint16)
    np.testing.assert_allclose(to_display(deep), deep / 65535.0)
    mask = photo > 0.5
    np.testing.assert_array_equal(to_display(mask), mask.astype(np.float64))
    # grey (H, W) and (1, H, W) become three equal channels; alpha is dropped
    grey = photo[..., 0]
    expected = np.repeat(grey[..., None], 3, -1)
    np.testing.assert_allclose(to_display(torch.from_numpy(grey)[None]), expected)
    rgba = np.concatenate([photo, np.zeros_like(grey)[..., None]], axis=-1)
    np.testing.assert_allclose(to_display(rgba), photo)


def test_to_display_min_maxes_out_of_range_images_and_warns_at_the_caller(photo):
    x = _normalise(photo)
    with pytest.warns(UserWarning, match=r"outside \[0, 1\]") as record:
        shown = to_display(x)
    assert record[0].filename == __file__
    low, high = float(x.min()), float(x.max())
    np.testing.assert_allclose(shown, (x.permute(1, 2, 0).numpy() - low) / (high - low))
    with pytest.warns(UserWarning, match="check that mean=/std=") as record:
        to_display(x * 10, MEAN, STD)
    assert record[0].filename == __file__
    # within the tolerance of resizing's overshoot: clipped, no warning
    slightly = torch.from_numpy(photo).permute(2, 0, 1) * 1.04 - 0.02
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shown = to_display(slightly)
    np.testing.assert_allclose(shown, np.clip(slightly.permute(1, 2, 0).numpy(), 0, 1))
    # NaN is drawn as 0; a constant out-of-range image is black, not NaN
    holes = photo.copy()
    holes[0, 0] = np.nan
    assert to_display(holes)[0, 0].tolist() == [0.0, 0.0, 0.0]
    with pytest.warns(UserWarning):
        assert not to_display(np.full((4, 4, 3), 7.0)).any()


def test_visualize_pair_warns_at_its_caller(photo):
    q_map, _ = _maps()
    x = _normalise(photo)
    with pytest.warns(UserWarning, match="outside") as record:
        visualize_pair(x, q_map, [photo])
    assert record[0].filename == __file__


def test_to_display_checks_its_arguments(photo):
    with pytest.raises(ValueError, match="either mean=/std= or denormalize="):
        to_display(photo, MEAN, STD, denormalize=lambda t: t)
    with pytest.raises(ValueError, match="go together"):
        to_display(photo, std=STD)
    with pytest.raises(ValueError, match="integer image"):
        to_display((photo * 255).astype(np.uint8), MEAN, STD)
    with pytest.raises(ValueError, match="1 or 3 numbers"):
        to_display(photo, (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match="expected an image"):
        to_display(np.zeros((2, 3, 8, 8)))
