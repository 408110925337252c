"""Augmentation units: the --augment grammar, what each preset does to pixels, seeding, mixing,
feature-space augmentation, and the views source that reads one view per image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferkit.core.errors import UserError
from transferkit.core.records import Records, read_from
from transferkit.data.augment.frofa import parse_feature_augment
from transferkit.data.augment.mixing import Mixing
from transferkit.data.augment.pipeline import Augmentation, fresh_seeds, view_picks, view_seeds
from transferkit.data.augment.spec import mirror_note, mirror_warning, parse_augment
from transferkit.engine.batches import Batches
from transferkit.engine.feature_cache import FeatureSet, FeatureViews
from transferkit.engine.loop import classification_loss, dominant

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # erasing fills (124, 116, 104): no other transform makes that flat block
SIZE = 64


def ramps(n: int) -> torch.Tensor:
    """Images whose red channel is 4 x the column and green 4 x the row: a crop's extent can be read back."""
    x = torch.arange(SIZE) * 4
    image = torch.stack([x.expand(SIZE, SIZE), x[:, None].expand(SIZE, SIZE), torch.full((SIZE, SIZE), 100)])
    return image.to(torch.uint8).expand(n, 3, SIZE, SIZE).contiguous()


def augment(spec: str, n: int = 200, seed_base: int = 0) -> torch.Tensor:
    return Augmentation(parse_augment(spec), SIZE, "bilinear", IMAGENET_MEAN)(ramps(n), list(range(seed_base, seed_base + n)))


def crop_areas(out: torch.Tensor) -> torch.Tensor:
    """The fraction of the source each output shows, from the ramps' ranges (+1 px: both ends are in)."""
    width = (out[:, 0].float().amax((1, 2)) - out[:, 0].float().amin((1, 2))) / 4 + 1
    height = (out[:, 1].float().amax((1, 2)) - out[:, 1].float().amin((1, 2))) / 4 + 1
    return width * height / SIZE ** 2


def mirrored(out: torch.Tensor) -> torch.Tensor:
    return (out[:, 0, :, -1].float() - out[:, 0, :, 0].float()).mean(1) < 0


def erased(out: torch.Tensor, fill=(124, 116, 104)) -> torch.Tensor:
    """Images holding a 3x3 block of exactly the fill colour."""
    flat = (out == torch.tensor(fill, dtype=torch.uint8).view(1, 3, 1, 1)).all(1).float()
    return F.max_pool2d(-F.max_pool2d(-flat[:, None], 3, 1), 1).flatten(1).amax(1) > 0


@pytest.mark.parametrize("spec,low", [("light", 0.35), ("crop:0.8", 0.8)])
def test_crops_stay_within_the_scale_bounds(spec, low):
    areas = crop_areas(augment(spec))
    assert areas.min() >= low - 0.07 and areas.max() <= 1.0 + 1e-6
    assert areas.min() < low + 0.1 and areas.max() > 0.9  # the whole range is used: it does crop


def test_flip_and_erasing_happen_as_often_as_asked():
    light, strong = augment("light"), augment("strong")
    assert 0.35 < mirrored(light).float().mean() < 0.65
    assert not mirrored(augment("crop")).any()
    assert not erased(light).any()
    assert 0.03 <= erased(strong).float().mean() <= 0.25  # erase:0.1 (strong's), on 200 images
    assert erased(augment("crop,erase:1", 20)).all()


def test_presets_are_the_documented_torchvision_pipelines():
    names = lambda spec: [type(t).__name__ for t in Augmentation(parse_augment(spec), 32).pipeline(3).transforms]  # noqa: E731
    assert names("light") == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert names("strong") == ["RandomResizedCrop", "RandomHorizontalFlip", "TrivialAugmentWide", "RandomErasing"]
    assert names("jitter,rotate:10,crop:0.5,grayscale,blur:5") == [
        "RandomResizedCrop", "ColorJitter", "RandomRotation", "RandomGrayscale", "GaussianBlur"]
    assert names("jitter") == ["Resize", "ColorJitter"]  # no crop: resized to the input size first
    strong = Augmentation(parse_augment("strong"), 32).pipeline(3).transforms
    assert strong[0].scale == (0.35, 1.0) and strong[1].p == 0.5 and strong[3].p == 0.1
    assert parse_augment("light").canonical == parse_augment("flip, crop").canonical == "crop:0.35,flip:0.5"
    assert parse_augment("flip").mirror_only and not parse_augment("flip").random and parse_augment("flip:0.3").random


def test_grayscale_sources_come_out_at_the_input_size():
    out = Augmentation(parse_augment("strong"), 48)(torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8), [1, 2, 3, 4, 5])
    assert out.shape == (5, 1, 48, 48) and out.dtype == torch.uint8


@pytest.mark.parametrize("text,says", [
    ("crop:0", "crop must be in"), ("crop:abc", "needs a number"), ("blur:4", "odd kernel"), ("wobble", "unknown transform"),
    ("crop,,flip", "empty item"), ("none,flip", "cannot be combined"), ("trivial:2", "takes no value"),
    ("light,crop", "crop appears twice"), ("rotate:400", "rotate must be in")])
def test_grammar_mistakes_are_one_line(text, says):
    with pytest.raises(UserError) as error:
        parse_augment(text)
    assert says in str(error.value) and "\n" not in str(error.value)


def test_draws_are_seeded_per_image_and_leave_the_global_stream_alone():
    aug = Augmentation(parse_augment("strong"), SIZE, mean=IMAGENET_MEAN)
    before = torch.get_rng_state()
    a, b = aug(ramps(8), list(range(8))), aug(ramps(8), list(range(8)))
    assert torch.equal(torch.get_rng_state(), before)  # dropout and init draw what they drew without it
    assert torch.equal(a, b)
    assert torch.equal(aug(ramps(3), [5, 6, 7]), a[5:])  # an image's pixels depend on its seed only, not its batch
    assert not torch.equal(aug(ramps(8), list(range(100, 108))), a)
    index = torch.tensor([4, 9, 2])
    assert fresh_seeds(0, 1, 2, index) == fresh_seeds(0, 1, 2, index) != fresh_seeds(0, 2, 2, index)
    assert view_seeds(0, 1, index) != view_seeds(0, 2, index) != view_seeds(1, 2, index)
    picks = view_picks(0, 3, 1, torch.arange(400), 4)
    assert torch.equal(picks, view_picks(0, 3, 1, torch.arange(400), 4)) and set(picks.tolist()) == {0, 1, 2, 3}


def test_digits_are_not_flipped_without_a_warning():
    assert "mirrored digit" in mirror_warning("digits", parse_augment("light"))
    assert mirror_warning("mnist-5k", parse_augment("crop,rotate:10")) is None
    assert mirror_warning("fashion-mnist", parse_augment("strong")) is None
    assert mirror_note("digits") and mirror_note("fashion-mnist") is None


def test_mixed_targets_with_label_smoothing_and_class_weights():
    torch.manual_seed(0)
    logits, classes = torch.randn(6, 4), 4
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, soft = Mixing(0.4, 0.0, classes, seed=7)(x, y, epoch=2, b=5)
    lam = float(soft[0, 0])  # image 0 is mostly class 0, mixed with image 5 (class 1)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
    assert torch.allclose(soft.sum(1), torch.ones(6)) and torch.equal(dominant(soft), torch.where(
        torch.tensor(lam >= 0.5), y, y.roll(1, 0)))
    smoothed = 0.9 * soft + 0.1 / classes
    expected = -(smoothed * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(classification_loss(logits, soft, 0.1), expected, atol=1e-6)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    per_image = -(smoothed * logits.log_softmax(1)).sum(1)
    assert torch.allclose(classification_loss(logits, soft, 0.1, weights), (per_image * (soft @ weights)).mean(), atol=1e-6)
    one_hot = F.one_hot(y, classes).float()  # probabilities that are one class give the index loss
    assert torch.allclose(classification_loss(logits, one_hot, 0.1, weights), classification_loss(logits, y, 0.1, weights))
    again, _ = Mixing(0.4, 0.0, classes, seed=7)(x, y, epoch=2, b=5)
    other, _ = Mixing(0.4, 0.0, classes, seed=7)(x, y, epoch=2, b=6)
    assert torch.equal(again, mixed) and not torch.equal(other, mixed)
    vectors, soft2 = Mixing(0.4, 0.0, classes, seed=7)(torch.randn(6, 10), y, 0, 0)  # cached pooled features
    assert vectors.shape == (6, 10) and soft2.shape == (6, 4)


def test_cutmix_mixes_labels_by_the_box_area():
    x, y = torch.zeros(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    x[1] = 1.0  # image 0 is pasted into from image 3 (all 0) and image 2 from image 1 (all 1)
    mixed, soft = Mixing(0.0, 1.0, 4, seed=3)(x, y, 0, 0)
    share = float((mixed[2] == 1).float().mean())
    assert abs(float(soft[2, 1]) - share) < 1e-6 and 0 < share < 1


def test_brightness_on_features_is_a_seeded_offset_per_channel():
    frofa = parse_feature_augment("brightness:0.5", seed=1)
    x = torch.randn(4, 8, 3, 3)
    out = frofa(x, 0, 0)
    offset = out - x
    assert torch.allclose(offset, offset[:, :, :1, :1].expand_as(offset))  # the same at every place of a map
    assert (offset[:, :, 0, 0].abs() <= 0.5 * x.flatten(1).std(1, correction=0)[:, None] + 1e-6).all()
    assert torch.equal(frofa(x, 0, 0), out) and not torch.equal(frofa(x, 0, 1), out)
    vectors = torch.randn(4, 16)
    assert not torch.equal(frofa(vectors, 0, 0), vectors)
    assert parse_feature_augment("none", 0) is None and parse_feature_augment("none", 0, partial_cached=True) is None
    assert parse_feature_augment("auto", 0) is None  # head only, the plain loop
    assert parse_feature_augment("auto", 1, partial_cached=True) == frofa  # stages trained on cached features
    with pytest.raises(UserError):
        parse_feature_augment("contrast:2", 0)
    with pytest.raises(UserError):
        parse_feature_augment("brightness:-1", 0)


def _view(folder, v: int, n: int) -> FeatureSet:
    """A cached view (a real cache file) whose row ``i`` is ``100 v + i`` (exact in fp16)."""
    path = folder / f"view{v}.npy"
    np.save(path, (100 * v + np.arange(n)[:, None]).astype(np.float16))
    offset = np.load(path, mmap_mode="r").offset
    return FeatureSet(Records(path, n, (1,), np.float16, offset), torch.zeros(n, dtype=torch.long), path, False)


def test_a_training_batch_reads_one_view_per_image_whatever_v(tmp_path, monkeypatch):
    n, count = 50, 8
    views = [_view(tmp_path, v, n) for v in range(count)]
    read = []
    real = Records._read_into
    monkeypatch.setattr(Records, "_read_into", lambda self, buffer, offset: (read.append(buffer.nbytes),
                                                                               real(self, buffer, offset)))
    source = FeatureViews(views, lambda index, epoch, b: view_picks(0, epoch, b, index, count), tuple(map(str, range(count))))
    batches = Batches(source, 16, shuffle=True, seed=0)
    seen = []
    for b, index, raw, _ in batches(3):
        picks = view_picks(0, 3, b, index, count)
        assert torch.equal(raw[:, 0].float(), (100 * picks + index).float())  # each image's own view, in batch order
        seen += picks.tolist()
    assert sum(read) == n * 2  # one fp16 row per image: memory and reads as for one plain batch
    assert len(set(seen)) == count
    assert torch.equal(source.batch(torch.arange(3))[:, 0].float(), torch.arange(3).float())  # evaluation: the first view


def test_an_augmented_view_is_named_by_spec_view_and_seed():
    from transferkit.data.augment.views import Augmented
    from transferkit.data.imagesets import TensorImages

    images = TensorImages(ramps(6), torch.zeros(6, dtype=torch.long), ["a"], "ramps")
    light = Augmentation(parse_augment("light"), SIZE, mean=IMAGENET_MEAN)
    view = lambda aug, v, seed: Augmented(images, aug, v, seed)  # noqa: E731
    same = view(Augmentation(parse_augment("crop,flip"), SIZE, mean=IMAGENET_MEAN), 1, 0)
    assert view(light, 1, 0).fingerprint(labels=False) == same.fingerprint(labels=False)
    others = [view(light, 2, 0), view(light, 1, 5), view(Augmentation(parse_augment("strong"), SIZE, mean=IMAGENET_MEAN), 1, 0),
              view(Augmentation(parse_augment("light"), SIZE + 8, mean=IMAGENET_MEAN), 1, 0)]
    assert len({o.fingerprint(labels=False) for o in others} | {same.fingerprint(labels=False)}) == 5
    index = torch.tensor([4, 1])
    assert torch.equal(view(light, 1, 0).batch(index), light(ramps(2), view_seeds(0, 1, index)))
    assert not torch.equal(view(light, 1, 0).batch(index), view(light, 2, 0).batch(index))


def test_rows_of_several_cache_files_are_read_into_their_places(tmp_path):
    n = 50
    views = [_view(tmp_path, v, n) for v in range(3)]
    which = np.array([0, 1, 1, 2, 0, 0, 0, 1])
    rows = np.array([6, 7, 8, 9, 3, 4, 4, 49])  # rows 6, 7 of files 0 and 1: consecutive rows, two reads
    got = read_from([v.features for v in views], which, rows)
    assert got[:, 0].astype(int).tolist() == (100 * which + rows).tolist()
    assert read_from([views[0].features], np.zeros(0, int), np.zeros(0, int)).shape == (0, 1)
    with pytest.raises(IndexError):
        read_from([v.features for v in views], np.array([0, 2]), np.array([1, n]))
