"""Evaluation plots: each writes a decodable PNG, heatmap colours follow accuracy, bad input is refused."""

from collections import Counter

import numpy as np
import pytest

from zoo.evaluation.plots import accuracy_vs_length, format_length, needle_heatmap, perplexity_vs_position

LENGTHS = [512, 1024, 2048]
DEPTHS = [0.0, 0.5, 1.0]


def _grid(accuracy):
    return [{"task": "s_niah_1", "length": n, "depth": d, "accuracy": accuracy(n, d), "num_samples": 4}
            for n in LENGTHS for d in DEPTHS]


def _read(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    return (np.asarray(image)[..., :3] * 255).round().astype(np.uint8)


def _distinct_colors(image):
    return len(np.unique(image.reshape(-1, 3), axis=0))


def _dominant_non_gray(image):
    """Most common colour that is not white/gray/black (text, axes and background are achromatic)."""
    pixels = image.reshape(-1, 3).astype(int)
    chroma = pixels.max(axis=1) - pixels.min(axis=1)
    counts = Counter(map(tuple, pixels[chroma > 30]))
    return np.array(counts.most_common(1)[0][0])


def test_needle_heatmap_writes_png(tmp_path):
    records = _grid(lambda n, d: 1.0 - d * n / 4096)
    records.pop()  # one missing cell stays blank
    path = needle_heatmap(records, tmp_path / "nested" / "heatmap.png", "S-NIAH-1")
    assert path == tmp_path / "nested" / "heatmap.png" and path.is_file()
    assert _distinct_colors(_read(path)) > 1


def test_needle_heatmap_colors_follow_accuracy(tmp_path):
    good = _read(needle_heatmap(_grid(lambda n, d: 1.0), tmp_path / "good.png", "all right"))
    bad = _read(needle_heatmap(_grid(lambda n, d: 0.0), tmp_path / "bad.png", "all wrong"))
    good_rgb, bad_rgb = _dominant_non_gray(good), _dominant_non_gray(bad)
    assert good_rgb[1] > good_rgb[0]  # green-ish
    assert bad_rgb[0] > bad_rgb[1]  # red-ish
    assert np.abs(good_rgb - bad_rgb).sum() > 100


def test_needle_heatmap_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no records"):
        needle_heatmap([], tmp_path / "x.png", "empty")
    duplicate = _grid(lambda n, d: 0.5)
    duplicate.append(dict(duplicate[0], accuracy=0.25))
    with pytest.raises(ValueError, match="several records"):
        needle_heatmap(duplicate, tmp_path / "x.png", "duplicate")
    with pytest.raises(ValueError, match="no depth"):
        needle_heatmap([{"task": "mqar", "length": 64, "depth": None, "accuracy": 0.93}], tmp_path / "x.png", "mqar")
    mixed = _grid(lambda n, d: 0.5) + [{"task": "s_niah_2", "length": 4096, "depth": 0.5, "accuracy": 0.1}]
    with pytest.raises(ValueError, match="one task"):
        needle_heatmap(mixed, tmp_path / "x.png", "mixed")
    assert not (tmp_path / "x.png").exists()


def test_accuracy_vs_length_writes_png(tmp_path):
    series = {"s_niah_1": [(1024, 1.0), (512, 1.0), (4096, 0.5)], "mqar": [(512, 0.9), (16384, 0.1)]}
    path = accuracy_vs_length(series, tmp_path / "acc.png", "accuracy vs length")
    assert path.is_file() and _distinct_colors(_read(path)) > 1
    with pytest.raises(ValueError):
        accuracy_vs_length({}, tmp_path / "empty.png", "empty")


def test_perplexity_vs_position_writes_png(tmp_path):
    positions = [256, 512, 1024, 2048, 4096]
    series = {"titans": (positions, [30.0, 25.0, 22.0, 21.0, 20.5]), "baseline": (positions, [30, 26, 25, 40, 90])}
    path = perplexity_vs_position(series, tmp_path / "ppl.png", "perplexity vs position")
    assert path.is_file() and _distinct_colors(_read(path)) > 1
    with pytest.raises(ValueError):
        perplexity_vs_position({}, tmp_path / "empty.png", "empty")
    with pytest.raises(ValueError):
        perplexity_vs_position({"x": ([1, 2], [3.0])}, tmp_path / "ragged.png", "ragged")


@pytest.mark.parametrize("n, label", [(512, "512"), (1024, "1k"), (16384, "16k"), (1536, "1.5k"),
                                      (1048576, "1M"), (64, "64"), (2 * 1048576, "2M")])
def test_format_length(n, label):
    assert format_length(n) == label
