"""Shared training pieces: the scanner-field augmentation of echo frames."""

import torch

from engines.train import common


def _sector_frames(n=8, size=96):
    """Frames black outside a sector (apex at the top centre), grey speckle-free tissue inside."""
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                                torch.arange(size, dtype=torch.float32), indexing="ij")
    apex_row, apex_col = 10.0, size / 2
    radius = torch.hypot(rows - apex_row, cols - apex_col)
    angle = torch.atan2(cols - apex_col, rows - apex_row)
    sector = (radius < size * 0.8) & (angle.abs() < 0.6) & (rows >= apex_row)
    x = torch.zeros(n, 1, size, size)
    x[:, 0][:, sector] = 0.3
    return x, sector


def test_fields_stay_in_range_leave_the_background_black_and_repeat_with_the_seed():
    x, sector = _sector_frames()
    a = common.augment_scanner_fields(x, torch.Generator().manual_seed(3))
    b = common.augment_scanner_fields(x, torch.Generator().manual_seed(3))
    c = common.augment_scanner_fields(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    near_sector = torch.nn.functional.max_pool2d(sector[None, None].float(), 11, 1, 5)[0, 0] > 0
    assert (~near_sector).sum() > 1000
    assert (a[:, 0][:, ~near_sector] == 0).all()     # background: no gain, no haze


def test_haze_brightens_the_near_field_more_than_the_far_field():
    x, sector = _sector_frames(n=64)
    y = common.augment_scanner_fields(x, torch.Generator().manual_seed(0), gain_log_sd=(0.0, 0.0),
                                      haze=(0.3, 0.3), haze_p=1.0, haze_depth=(0.1, 0.1))
    added = (y - x)[:, 0]
    near = added[:, 12:24][:, sector[12:24]].mean()
    far = added[:, 60:72][:, sector[60:72]].mean()
    assert near > 0.15 and far < 0.02


def test_gain_field_varies_across_the_frame_without_haze():
    x, sector = _sector_frames(n=16)
    y = common.augment_scanner_fields(x, torch.Generator().manual_seed(1), gain_log_sd=(0.5, 0.5),
                                      haze_p=0.0)
    ratio = (y[:, 0][:, sector] / 0.3)
    per_frame_spread = ratio.std(dim=1)
    assert (per_frame_spread > 0.05).all()          # uneven: not one gain per frame
    assert torch.allclose(y[:, 0][:, ~sector], torch.zeros(()))
