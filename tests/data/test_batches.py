import torch

from cnnzip.data import augment, batches, normalize, synthetic_splits


def test_augment_without_shift_or_flip_is_identity():
    x = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8)
    out = augment(x, pad=0, hflip=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def test_augment_shifts_are_translations():
    x = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6).repeat(64, 1, 1, 1)
    out = augment(x, pad=1, hflip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for img in out[:, 0]:
        # every output is the original shifted by at most one pixel, possibly mirrored
        found = False
        for flip in (False, True):
            src = x[0, 0].flip(1) if flip else x[0, 0]
            padded = torch.nn.functional.pad(src, (1, 1, 1, 1))
            for dy in range(3):
                for dx in range(3):
                    found |= torch.equal(padded[dy:dy + 6, dx:dx + 6], img)
        assert found


def test_batches_cover_everything_once_and_normalize():
    splits = synthetic_splits()
    seen = torch.cat([y for _, y in batches(splits.train, splits.info, 100, shuffle=True)])
    assert torch.equal(seen.sort().values, splits.train.labels.sort().values)
    x, _ = next(batches(splits.test, splits.info, 8))
    assert torch.allclose(x, normalize(splits.test.images[:8], splits.info))
    assert torch.allclose(normalize(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8),
                                    splits.info), torch.tensor(2.0))
