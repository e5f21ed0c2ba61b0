"""Train the joint MR network of Qin et al. 2018 (``cardiostream engines train mr``).

Network: :mod:`engines.nets.mr_joint` (shared encoder, motion branch with a ConvGRU and a
bilinear sampler, segmentation branch of the four MR labels).

Data
----
* MR phantoms (:func:`calib.datasets.mr_sequence_samples`, cached on disk): whole cines
  of 20 frames with exact labels (background, LV cavity, LV myocardium, RV cavity);
  held-out phantoms of the ``test`` split judge Dice (and the motion's end-point error
  against the phantoms' truth displacement).
* Real patients (the Sunnybrook cines with expert contours), handed over as arrays by
  the caller (``read_patient``: the engines read no files; ``cardiostream engines train
  mr`` passes :func:`streamer.io.sunnybrook.read_patient`). Every frame of every slice of
  the training patients feeds the motion loss (and the warped-segmentation loss); the
  contoured images feed the cross-entropy with partial labels: at end-diastole the
  endocardial and epicardial contours give LV cavity and LV myocardium exactly, and
  "outside the epicardium" is background *or* RV (the contours have no RV), so the loss
  there is -log(p_background + p_RV); at end-systole only the endocardium is drawn, so
  the image gives "LV cavity" inside and "anything but LV cavity" outside
  (-log(1 - p_cavity)). Soft Dice of the cavity and myocardium joins the cross-entropy
  where the label says which pixels are in the class. ``--holdout-patient`` leaves one
  patient out of everything (labels and motion).

Intensities: :func:`engines.nets.mr_joint.normalise` per image (the run-time function).

Losses (Qin et al. 2018)
------------------------
* motion, unsupervised, against a reference: every frame of a sequence is paired with its
  first (``--sequence-length`` frames from a random phase); mean-squared error between the
  reference and frame k warped onto the reference's grid by the flow, plus Huber
  (pseudo-Huber, delta ``HUBER_DELTA`` px) penalties of the flow's spatial gradients
  (``--smooth-spatial``) and of its change from one frame to the next
  (``--smooth-temporal``). Against frame-to-frame pairs (the earlier recipe) at equal cost
  (1500 motion steps, sequences of 10, fold SCD0000301) the held-out ES->ED contour
  distance fell from 2.39 to 1.91 mm; with the full schedule, over the three
  leave-one-patient-out folds, from 1.75 to 1.68 mm (docs/benchmarks.md, issue 13);
* segmentation: the (partial-label) cross-entropy + soft Dice above on labelled frames,
  plus the warped-segmentation loss on the frames of the sequences (``--warp-seg``): the
  predicted label probabilities of frame k warped onto the reference by the motion are the
  (detached) target of the reference's prediction (KL divergence: zero for a perfect
  match);
* optional, off by default (docs/benchmarks.md, issue 13, fifteenth session): the labels
  the motion carries (``--label-motion``: each labelled frame's LV cavity and myocardium
  warped onto the reference, soft Dice against the reference's, in steps 1 and 3 or step 1
  only, ``--label-motion-in``; with ``--labelled-start`` real sequences start at a contoured
  phase so the ED and ES contours of a slice meet in one sequence), and Qin et al.'s weak
  supervision of unlabelled frames (``--warp-truth``: later frames' predicted labels warped
  onto a labelled reference, cross-entropy against its labels). Over the three folds they
  took the ES->ED contour distance to 1.51 mm and segmentation down (one seed each), so
  the shipped recipe does not use them in steps 1-3; it uses them in step 4 below, where
  they cannot touch the segmentation (1.68 -> 1.59 mm over the folds, sixteenth session).

Schedule (the paper's three steps): (1) ``--motion-steps`` on the motion loss (encoder and
motion branch), (2) ``--seg-steps`` on the segmentation losses with the encoder frozen
(segmentation branch only), (3) ``--joint-steps`` on all losses, every part trained; and an
optional fourth of ours, (4) ``--refine-motion-steps`` on the motion loss with the labels
the motion carries (``--refine-label-motion``, ``--refine-warp-truth``), the motion branch
alone (the encoder and the segmentation branch frozen, so the labels stay step 3's bit for
bit): the label terms helped the motion but, trained into the shared encoder, cost
segmentation (fifteenth session). ``--init`` starts from trained weights (step 4 alone
on them: ``--motion-steps 0 --seg-steps 0 --joint-steps 0``).
Training runs on ``--crop`` x ``--crop`` crops around the LV (the network is fully
convolutional) with ``--augment strong`` (:func:`augment_strong`, the default): any
rotation, zoom 0.6-1.5, aspect stretch, a smooth elastic displacement, a random monotone
contrast curve, gamma, a smooth multiplicative bias field, blur or unsharp masking and
Rician noise, one draw per sequence (``basic``: the earlier affine with gain / gamma /
Gaussian noise). On the hardest leave-one-patient-out fold (SCD0000101 held out) the strong
augmentation raised myocardium / cavity Dice from 0.424 / 0.666 to 0.635 / 0.769 (full
schedule; docs/benchmarks.md, issue 13). The sequences of the motion and warped-segmentation
losses take ``--sequence-augment`` (default ``basic``): with the strong recipe on them the
motion was no better than zero flow on held-out phantoms (EPE 0.386 against 0.383 px); with
the basic one it is back to 0.30-0.32 px, and over the three leave-one-patient-out folds
the ES->ED contour distance falls from 2.17 to 1.75 mm while segmentation gains a little.
Evaluation on whole 256 x 256 frames.

Evaluation on a held-out patient (:func:`evaluate_patient`): Dice of the LV myocardium at
the contoured end-diastolic images (the only ones with an epicardial contour) and of the LV
cavity at the contoured end-diastolic and end-systolic images; motion as Qin et al. judge
it: the end-systolic endocardial contour brought to end-diastole by the motion from
end-diastole to end-systole (:func:`motion_to_last`), against the expert end-diastolic one
as mean contour distance in mm (the myocardium's inner border; these patients have no
end-systolic epicardium).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from calib.truth import dice
from engines.nets import mr_joint
from engines.train import common
from streamer.measure.sax import largest_lv_component
from streamer.vocab import MRLabel

ROLE = "mr"
BUILDER = "mr_sequence_samples"
FRAMES_PER_CLIP = 20
#: the three patients of ../shared/data/sunnybrook
SUNNYBROOK_PATIENTS = ("SCD0000101", "SCD0000201", "SCD0000301")
#: pseudo-Huber delta of the smoothness terms (px per px, px per frame)
HUBER_DELTA = 0.01

#: partial-label codes of a target map: 0..3 the MR labels; the rest sets of labels
BG_OR_RV = 4          # outside the epicardium of a real image: background or RV
NOT_CAVITY = 5        # outside the endocardium of an end-systolic real image
IGNORE = 6            # outside the image (augmentation padding): no loss
#: code -> which of the 4 labels it allows
ALLOWED = torch.tensor([
    [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
    [1, 0, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)

ReadPatient = Callable[[Path, str], dict]
#: augmentation: zoom range of the random affine (> 1 magnifies) and gamma range. Wide on
#: purpose: with (0.85, 1.2) / (0.75, 1.35) the first LOPO fold fitted the two large,
#: dilated training hearts (Dice 0.91 / 0.97) and missed the smaller held-out one (0.34 / 0.45)
AUGMENT_SCALE = (0.7, 1.45)
AUGMENT_GAMMA = (0.6, 1.6)


# ------------------------------------------------------------------ data
@dataclass
class Patient:
    """A real patient's cine (normalised) and contoured images, from the arrays of
    :func:`streamer.io.sunnybrook.read_patient`."""

    name: str
    images: np.ndarray          # (S, P, H, W) float32, normalise()d per image
    spacing_mm: np.ndarray      # (2,)
    label_slice: np.ndarray     # (K,)
    label_phase: np.ndarray     # (K,)
    targets: np.ndarray         # (K, H, W) uint8 partial-label codes
    cavity: np.ndarray          # (K, H, W) uint8
    myocardium: np.ndarray      # (K, H, W) uint8
    has_epicardium: np.ndarray  # (K,) bool
    endo: list                  # K arrays (M, 2) (x, y) px
    centres: np.ndarray         # (S, 2) LV centre (row, col) px per slice

    @classmethod
    def from_arrays(cls, name: str, a: dict) -> Patient:
        imgs = np.asarray(a["images"])
        norm = np.stack([[mr_joint.normalise(im) for im in sl] for sl in imgs]).astype(np.float32)
        cav, myo, epi = a["cavity"].astype(np.uint8), a["myocardium"].astype(np.uint8), a["has_epicardium"]
        targets = np.empty(cav.shape, np.uint8)
        for k in range(len(cav)):
            t = np.full(cav.shape[1:], BG_OR_RV if epi[k] else NOT_CAVITY, np.uint8)
            t[myo[k] > 0] = MRLabel.LV_MYOCARDIUM
            t[cav[k] > 0] = MRLabel.LV_CAVITY
            targets[k] = t
        off = a["endo_offsets"]
        endo = [a["endo_points"][off[i]:off[i + 1]] for i in range(len(cav))]
        cen = np.array([np.argwhere(c).mean(0) for c in cav])
        centres = np.empty((imgs.shape[0], 2))
        for s in range(imgs.shape[0]):
            sel = a["label_slice"] == s
            centres[s] = cen[sel].mean(0) if sel.any() else cen.mean(0)
        return cls(name, norm, np.asarray(a["spacing_mm"], float), np.asarray(a["label_slice"]),
                   np.asarray(a["label_phase"]), targets, cav, myo, np.asarray(epi, bool), endo, centres)


@dataclass
class Phantoms:
    """Phantom cines, normalised per image, with exact labels."""

    frames: np.ndarray          # (N, T, H, W) float32
    labels: np.ndarray          # (N, T, H, W) uint8
    centres: np.ndarray         # (N, 2) LV centre (row, col) px, frame 0
    displacement: np.ndarray | None = None

    @classmethod
    def from_samples(cls, s: dict) -> Phantoms:
        frames = np.stack([[mr_joint.normalise(f) for f in clip] for clip in s["frames"]]).astype(np.float32)
        labels = s["labels"]
        centres = np.array([np.argwhere(lab[0] == MRLabel.LV_CAVITY).mean(0) for lab in labels])
        return cls(frames, labels, centres, s.get("displacement"))


def load_phantoms(split: str, n: int, motion: bool = False) -> tuple[Phantoms, dict]:
    from engines.train.data import dataset

    kw = {"motion": True} if motion else {}
    s = dataset(BUILDER, split, n, **kw)
    return Phantoms.from_samples(s), common.split_record(BUILDER, split, s, frames=FRAMES_PER_CLIP, **kw)


# ------------------------------------------------------------------ augmentation
AUGMENTS = ("basic", "strong")
#: strong augmentation: zoom (> 1 magnifies), rotation (degrees, either way), aspect stretch,
#: elastic displacement (standard deviation of a 5 x 5 control grid, fraction of the half-size)
STRONG_SCALE = (0.6, 1.5)
STRONG_ROTATE_DEG = 180.0
STRONG_ASPECT = (0.85, 1.18)
STRONG_ELASTIC = 0.03


def _uniform(shape, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _gauss_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) (or (N, C, H, W)) by ``sigma`` px, edges replicated."""
    r = max(1, int(np.ceil(2.5 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    y = x.reshape(-1, 1, *x.shape[-2:])
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(x.shape)


def augment_strong(frames: torch.Tensor, targets: torch.Tensor | None, g: torch.Generator):
    """Domain-robust augmentation of (B, T, H, W) frames in [0, 1] (and their (B, T, H, W)
    uint8 label codes, or None), one draw per sample shared by its T frames (the motion loss
    needs the frames of a sequence consistent; only the noise differs per frame):

    * geometry: zoom :data:`STRONG_SCALE`, any rotation, aspect stretch
      :data:`STRONG_ASPECT`, shift, and a smooth elastic displacement (5 x 5 control grid,
      bicubic); labels nearest, IGNORE outside the image;
    * intensity: a random monotone contrast curve (piecewise linear, 6 knots; p 0.7), gamma
      0.6-1.6, a smooth multiplicative bias field (4 x 4 log-gains of sd up to 0.35), gain
      0.8-1.25, blur (sigma 0.3-1.2 px, p 0.25) or unsharp masking (p 0.2), Rician noise
      (sigma up to 0.05); clipped to [0, 1]."""
    b, t, h, w = frames.shape
    s = _uniform(b, g, *STRONG_SCALE)
    asp = torch.exp(_uniform(b, g, float(np.log(STRONG_ASPECT[0])), float(np.log(STRONG_ASPECT[1]))))
    sx, sy = s * asp.sqrt(), s / asp.sqrt()
    a = torch.deg2rad(_uniform(b, g, -STRONG_ROTATE_DEG, STRONG_ROTATE_DEG))
    sh = _uniform((b, 2), g, -0.08, 0.08)
    c, si = torch.cos(a), torch.sin(a)
    theta = torch.stack([torch.stack([c / sx, -si / sy, sh[:, 0]], 1),
                         torch.stack([si / sx, c / sy, sh[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [b, t, h, w], align_corners=False)
    ctrl = torch.randn((b, 2, 5, 5), generator=g) * STRONG_ELASTIC * torch.rand((b, 1, 1, 1), generator=g)
    grid = grid + F.interpolate(ctrl, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    frames = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if targets is not None:
        tt = F.grid_sample(targets.float() + 1.0, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        targets = torch.where(tt > 0, tt - 1.0, torch.full_like(tt, IGNORE)).to(torch.uint8)
    x = frames.clamp(0, 1)
    # monotone contrast curve
    knots = 6
    inc = _uniform((b, knots - 1), g, 0.25, 1.75)
    ys = torch.cat([torch.zeros(b, 1), inc.cumsum(1) / inc.sum(1, keepdim=True)], 1)     # (B, knots)
    use = torch.rand(b, generator=g) < 0.7
    ys = torch.where(use[:, None], ys, torch.linspace(0, 1, knots).expand(b, knots))
    pos = x * (knots - 1)
    i0 = pos.floor().clamp(max=knots - 2).long()
    fr = pos - i0
    idx = i0.reshape(b, -1)
    lo = torch.gather(ys, 1, idx).reshape(x.shape)
    hi = torch.gather(ys, 1, idx + 1).reshape(x.shape)
    x = lo + (hi - lo) * fr
    # gamma, bias field, gain
    x = x.clamp(0, 1) ** _uniform((b, 1, 1, 1), g, *AUGMENT_GAMMA)
    sd = _uniform((b, 1, 1, 1), g, 0.0, 0.35)
    field = torch.exp(F.interpolate(torch.randn((b, 1, 4, 4), generator=g) * sd, size=(h, w),
                                    mode="bicubic", align_corners=True))
    x = x * field * _uniform((b, 1, 1, 1), g, 0.8, 1.25)
    # blur or sharpen
    r = torch.rand(b, generator=g)
    sig = _uniform(b, g, 0.3, 1.2)
    amt = _uniform(b, g, 0.3, 1.0)
    out = []
    for k in range(b):
        if r[k] < 0.25:
            out.append(_gauss_blur(x[k], float(sig[k])))
        elif r[k] < 0.45:
            out.append(x[k] + float(amt[k]) * (x[k] - _gauss_blur(x[k], 1.0)))
        else:
            out.append(x[k])
    x = torch.stack(out)
    # Rician noise
    ns = _uniform((b, 1, 1, 1), g, 0.0, 0.05)
    n1 = torch.randn(x.shape, generator=g) * ns
    n2 = torch.randn(x.shape, generator=g) * ns
    x = torch.sqrt((x + n1) ** 2 + n2 ** 2)
    return x.clamp(0, 1), targets


# ------------------------------------------------------------------ batches
class Sampler:
    """Random training batches: sequences (motion, warped segmentation) and labelled frames,
    as crops around the LV with the same random affine per sequence; ``augment`` is the
    labelled frames' recipe, ``sequence_augment`` the sequences' (``--augment``,
    ``--sequence-augment``)."""

    def __init__(self, patients: list[Patient], phantoms: Phantoms, crop: int, real_fraction: float,
                 g: torch.Generator, augment: str = "strong", sequence_augment: str = "basic"):
        for name in (augment, sequence_augment):
            if name not in AUGMENTS:
                raise ValueError(f"augment {name!r}: one of {AUGMENTS}")
        self.patients, self.ph, self.crop, self.g, self.augment = patients, phantoms, crop, g, augment
        self.sequence_augment = sequence_augment
        self.real_fraction = real_fraction if patients else 0.0
        # labelled real images: (patient index, k)
        self.real_labelled = [(i, k) for i, p in enumerate(patients) for k in range(len(p.targets))]
        self.real_slices = [(i, s) for i, p in enumerate(patients) for s in range(p.images.shape[0])]

    def _rand(self) -> float:
        return float(torch.rand(1, generator=self.g))

    def _int(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.g))

    def _corner(self, centre, size) -> tuple[int, int]:
        c, (h, w) = self.crop, size
        if self._rand() < 0.15:   # anywhere: the network must also stay quiet away from the heart
            return self._int(h - c + 1), self._int(w - c + 1)
        j = torch.randint(-c // 4, c // 4 + 1, (2,), generator=self.g).tolist()
        r, q = int(round(centre[0])) - c // 2 + j[0], int(round(centre[1])) - c // 2 + j[1]
        return min(max(r, 0), h - c), min(max(q, 0), w - c)

    def _augment(self, frames: torch.Tensor, targets: torch.Tensor | None, augment: str):
        """frames (B, T, H, W), targets (B, T, H, W) uint8 or None -> the same after one random
        affine per sample (targets nearest, IGNORE outside) and gain / gamma / noise
        (``augment`` 'basic'), or :func:`augment_strong` ('strong')."""
        if augment == "strong":
            return augment_strong(frames, targets, self.g)
        b, t, h, w = frames.shape
        theta = common.random_affine(b, self.g, scale=AUGMENT_SCALE, shift=0.04, rotate_deg=25.0)
        frames = common.warp(frames, theta)
        if targets is not None:
            tt = common.warp(targets.float() + 1.0, theta, mode="nearest")
            targets = torch.where(tt > 0, tt - 1.0, torch.full_like(tt, IGNORE)).to(torch.uint8)
        frames = common.augment_intensity(frames, self.g, gain=(0.8, 1.25), gamma=AUGMENT_GAMMA, noise=0.03)
        return frames, targets

    def sequences(self, n: int, length: int, labelled_start: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, length, crop, crop) consecutive frames (cyclic), real or phantom, and their
        partial-label codes (:data:`IGNORE` on frames without labels: the real patients'
        uncontoured phases). A real sequence starts at a contoured phase (end-diastole or
        end-systole) with probability ``labelled_start``, else at any phase."""
        frames, codes = [], []
        for _ in range(n):
            if self._rand() < self.real_fraction:
                i, s = self.real_slices[self._int(len(self.real_slices))]
                p = self.patients[i]
                seq, centre = p.images[s], p.centres[s]
                labelled = {int(p.label_phase[k]): p.targets[k] for k in np.flatnonzero(p.label_slice == s)}
                starts = sorted(labelled)
                t0 = (starts[self._int(len(starts))] if starts and labelled_start > 0 and self._rand() < labelled_start
                      else self._int(seq.shape[0]))
                idx = [(t0 + k) % seq.shape[0] for k in range(length)]
                blank = np.full(seq.shape[-2:], IGNORE, np.uint8)
                lab = np.stack([labelled.get(t, blank) for t in idx])
            else:
                i = self._int(len(self.ph.frames))
                seq, centre = self.ph.frames[i], self.ph.centres[i]
                t0 = self._int(seq.shape[0])
                idx = [(t0 + k) % seq.shape[0] for k in range(length)]
                lab = self.ph.labels[i][idx]
            r, c = self._corner(centre, seq.shape[-2:])
            frames.append(seq[idx, r:r + self.crop, c:c + self.crop])
            codes.append(lab[:, r:r + self.crop, c:c + self.crop])
        x, t = self._augment(torch.from_numpy(np.stack(frames)), torch.from_numpy(np.stack(codes)),
                             self.sequence_augment)
        return x, t.long()

    def labelled(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 1, crop, crop) frames and their partial-label codes (n, crop, crop)."""
        xs, ts = [], []
        for _ in range(n):
            if self.real_labelled and self._rand() < self.real_fraction:
                i, k = self.real_labelled[self._int(len(self.real_labelled))]
                p = self.patients[i]
                img, tgt, centre = p.images[p.label_slice[k], p.label_phase[k]], p.targets[k], p.centres[p.label_slice[k]]
            else:
                i = self._int(len(self.ph.frames))
                t = self._int(self.ph.frames.shape[1])
                img, tgt, centre = self.ph.frames[i, t], self.ph.labels[i, t], self.ph.centres[i]
            r, c = self._corner(centre, img.shape)
            xs.append(img[r:r + self.crop, c:c + self.crop])
            ts.append(tgt[r:r + self.crop, c:c + self.crop])
        x, t = self._augment(torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ts))[:, None],
                             self.augment)
        return x, t[:, 0].long()


# ------------------------------------------------------------------ losses
def pseudo_huber(x: torch.Tensor, delta: float = HUBER_DELTA) -> torch.Tensor:
    """Elementwise pseudo-Huber: delta^2 (sqrt(1 + (x / delta)^2) - 1), ~x^2/2 near 0, ~delta |x| far."""
    return delta * delta * (torch.sqrt(1.0 + (x / delta) ** 2) - 1.0)


def motion_loss(frames: torch.Tensor, flows: torch.Tensor, smooth_spatial: float,
                smooth_temporal: float) -> tuple[torch.Tensor, dict]:
    """Qin et al.'s unsupervised motion loss on sequences ``frames`` (N, T, H, W) with
    ``flows`` (N, T-1, 2, H, W) (flow k: frame 0, the reference, -> frame k+1 on frame 0's
    grid): MSE of each frame warped onto the reference, pseudo-Huber of the flows' spatial
    gradients and of their change from one frame to the next (the latter only where
    T > 2). Zero for a perfect warp of a constant flow."""
    n, t1, _, h, w = flows.shape
    nxt = frames[:, 1:].reshape(n * t1, 1, h, w)
    warped = mr_joint.bilinear_sampler(nxt, flows.reshape(n * t1, 2, h, w))
    reference = frames[:, :1].expand(n, t1, h, w).reshape(n * t1, 1, h, w)
    mse = ((warped - reference) ** 2).mean()
    f = flows
    spatial = (pseudo_huber(f[..., 1:, :] - f[..., :-1, :]).mean() + pseudo_huber(f[..., 1:] - f[..., :-1]).mean())
    temporal = pseudo_huber(f[:, 1:] - f[:, :-1]).mean() if t1 > 1 else f.new_zeros(())
    loss = mse + smooth_spatial * spatial + smooth_temporal * temporal
    return loss, {"mse": float(mse.detach()), "smooth_spatial": float(spatial.detach()),
                  "smooth_temporal": float(temporal.detach())}


def label_motion_loss(codes: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
    """The motion judged by the labels it carries: each labelled later frame's LV cavity
    and myocardium, warped onto the reference by its flow, against the reference's own
    (soft Dice, one term per frame pair and class where both frames say which pixels are
    in the class: a real end-systolic image has no epicardium, so its myocardium is not
    used). ``codes`` (N, T, H, W) long partial-label codes (:data:`IGNORE` on unlabelled
    frames), ``flows`` (N, T-1, 2, H, W) as :func:`motion_loss`'s. Zero when every
    warped region covers its reference exactly; zero (no term) without labelled pairs."""
    n, t1, _, h, w = flows.shape
    allowed = ALLOWED.to(codes.device)[codes]                                  # (N, T, H, W, 4)
    valid = codes != IGNORE
    terms = []
    for cls in (MRLabel.LV_CAVITY, MRLabel.LV_MYOCARDIUM):
        ambiguous = valid & (allowed.sum(-1) > 1) & allowed[..., cls]         # a set holding cls
        known = valid.flatten(2).any(-1) & ~ambiguous.flatten(2).any(-1)      # (N, T)
        inside = (codes == cls).float()
        ok = known[:, :1] & known[:, 1:] & (inside[:, 0].flatten(1).sum(-1) > 0)[:, None]
        if not bool(ok.any()):
            continue
        moved = mr_joint.bilinear_sampler(inside[:, 1:].reshape(n * t1, 1, h, w),
                                          flows.reshape(n * t1, 2, h, w)).reshape(n, t1, h, w)
        ref = inside[:, :1].expand(n, t1, h, w)
        d = 1.0 - (2 * (moved * ref).flatten(2).sum(-1) + 1.0) / (moved.flatten(2).sum(-1) + ref.flatten(2).sum(-1) + 1.0)
        terms.append(d[ok])
    if not terms:
        return flows.new_zeros(())
    return torch.cat(terms).mean()


def partial_label_loss(logits: torch.Tensor, codes: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy with partial labels plus soft Dice of LV cavity and myocardium.

    ``logits`` (N, 4, H, W); ``codes`` (N, H, W) long: 0..3 a label, :data:`BG_OR_RV`,
    :data:`NOT_CAVITY` sets of labels, :data:`IGNORE` no loss. Per pixel
    -log(sum of the allowed labels' probabilities); the Dice of a class counts the pixels
    whose code says whether they are in it. Zero (to rounding) for logits that put all
    mass on an allowed label and match every class exactly."""
    allowed = ALLOWED.to(logits.device)[codes].permute(0, 3, 1, 2)          # (N, 4, H, W)
    valid = codes != IGNORE
    lse_all = torch.logsumexp(logits, 1)
    lse_ok = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), 1)
    ce = ((lse_all - lse_ok) * valid).sum() / valid.sum().clamp(min=1)
    if not dice_weight:
        return ce
    p = logits.softmax(1)
    dice_terms = []
    for cls in (MRLabel.LV_CAVITY, MRLabel.LV_MYOCARDIUM):
        known = valid & ((allowed.sum(1) == 1) | ~allowed[:, cls])            # in-or-out is known
        truth = (codes == cls).float() * known
        pc = p[:, cls] * known
        if float(truth.sum()) == 0 and float(pc.sum()) < 1e-6:
            continue
        dice_terms.append(1.0 - (2 * (pc * truth).sum() + 1.0) / (pc.sum() + truth.sum() + 1.0))
    dice = torch.stack(dice_terms).mean() if dice_terms else logits.new_zeros(())
    return ce + dice_weight * dice


def warped_segmentation_loss(logits: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
    """The reference's (frame 0's) predicted labels against each later frame's predicted
    label probabilities warped onto it by the motion (detached target): mean cross-entropy
    less the target's entropy (the KL divergence) over the sequence.
    ``logits`` (N, T, 4, H, W), ``flows`` (N, T-1, 2, H, W) as :func:`motion_loss`'s. Zero
    where the warped prediction is certain and equals the reference's."""
    n, t, c, h, w = logits.shape
    nxt = logits[:, 1:].reshape(n * (t - 1), c, h, w).softmax(1)
    target = mr_joint.bilinear_sampler(nxt, flows.reshape(n * (t - 1), 2, h, w)).detach()
    reference = logits[:, :1].expand(n, t - 1, c, h, w).reshape(n * (t - 1), c, h, w)
    logp = F.log_softmax(reference, 1)
    ent = (target * torch.log(target.clamp(min=1e-8))).sum(1).mean()      # so a perfect match gives 0
    return -(target * logp).sum(1).mean() + ent


def warped_truth_loss(logits: torch.Tensor, flows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Qin et al.'s weakly supervised segmentation of unlabelled frames: each later frame's
    predicted label probabilities, warped onto the reference by the motion, against the
    reference's labels (partial-label cross-entropy, :func:`partial_label_loss`'s without
    the Dice), so a contoured image teaches the segmentation of every frame of its cycle
    through the motion, and the motion learns from the labels it carries. ``logits`` (N,
    T, 4, H, W), ``flows`` (N, T-1, 2, H, W) as :func:`warped_segmentation_loss`'s,
    ``codes`` (N, T, H, W) long (only frame 0's are read; :data:`IGNORE` where unknown).
    Zero where the warped prediction puts all its mass on an allowed label; zero (no term)
    where no reference is labelled."""
    n, t, c, h, w = logits.shape
    ref = codes[:, 0]
    valid = ref != IGNORE                                                          # (N, H, W)
    has = valid.flatten(1).any(-1)
    if not bool(has.any()):
        return logits.new_zeros(())
    nxt = logits[has, 1:].reshape(-1, c, h, w).softmax(1)
    m = int(has.sum())
    warped = mr_joint.bilinear_sampler(nxt, flows[has].reshape(-1, 2, h, w)).reshape(m, t - 1, c, h, w)
    allowed = ALLOWED.to(logits.device)[ref[has]].permute(0, 3, 1, 2)[:, None]   # (M, 1, 4, H, W)
    p_ok = (warped * allowed).sum(2).clamp(min=1e-6)                             # (M, T-1, H, W)
    ok = valid[has][:, None].expand_as(p_ok)
    return -(torch.log(p_ok) * ok).sum() / ok.sum().clamp(min=1)


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def predict_labels(model: mr_joint.MRJointNet, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """(N, H, W) normalised images -> (N, H, W) uint8 labels (argmax)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))[:, None]
        out.append(model.segment(model.encode(x), x.shape[-2:], x).argmax(1).numpy().astype(np.uint8))
    return np.concatenate(out)


@torch.no_grad()
def motion_to_last(model: mr_joint.MRJointNet, frames: np.ndarray) -> np.ndarray:
    """(T, H, W) normalised frames -> (H, W, 2) displacement (dx, dy) px from frame 0 to
    frame T-1 on frame 0's grid: the network's last flow over the sequence (every frame
    against frame 0, the recurrent state starting at zero there), as the app runs it."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(frames))[None]
    _, flows = model.sequence(x, segment=False)
    return flows[0, -1].permute(1, 2, 0).numpy()


def displacement_from_first(steps: np.ndarray) -> np.ndarray:
    """Frame-to-frame displacements (T, H, W, 2) (dx, dy) px, step t from frame t to t + 1
    on frame t's grid -> (T, H, W, 2): from frame 0 to frame t + 1 on frame 0's grid,
    D_t+1(x) = D_t(x) + d_t(x + D_t(x)) (bilinear, border values beyond the edge)."""
    import cv2

    steps = np.asarray(steps, np.float32)
    h, w = steps.shape[1:3]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = np.empty_like(steps)
    total = np.zeros((h, w, 2), np.float32)
    for t, d in enumerate(steps):
        total = total + cv2.remap(np.ascontiguousarray(d), gx + total[..., 0], gy + total[..., 1],
                                  cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out[t] = total
    return out


def _resample_polygon(xy: np.ndarray, step_px: float = 0.25) -> np.ndarray:
    closed = np.vstack([xy, xy[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    q = np.arange(0.0, s[-1], step_px)
    return np.stack([np.interp(q, s, closed[:, 0]), np.interp(q, s, closed[:, 1])], 1)


def warp_points_back(points_xy: np.ndarray, phi: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Points of the later frame ((M, 2) (x, y) px) brought to frame 0, for the displacement
    ``phi`` (H, W, 2) from frame 0 to the later frame on frame 0's grid: solves
    x + phi(x) = y by fixed-point iteration (phi sampled bilinearly)."""
    from scipy.ndimage import map_coordinates

    y = np.asarray(points_xy, np.float64)
    x = y.copy()
    for _ in range(iterations):
        coords = [x[:, 1], x[:, 0]]                     # (row, col)
        d = np.stack([map_coordinates(phi[..., c].astype(np.float64), coords, order=1, mode="nearest")
                      for c in (0, 1)], 1)
        x = y - d
    return x


def mean_contour_distance_mm(a_xy: np.ndarray, b_xy: np.ndarray, spacing_mm: np.ndarray) -> float:
    """Symmetric mean distance between two closed contours ((x, y) px), in mm."""
    from scipy.spatial import cKDTree

    sc = np.array([spacing_mm[1], spacing_mm[0]])         # x = col, y = row
    a, b = _resample_polygon(a_xy) * sc, _resample_polygon(b_xy) * sc
    return float((cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean()) / 2.0)


def evaluate_patient(model: mr_joint.MRJointNet, patient: Patient) -> dict:
    """Dice and motion on a (held-out) patient's contoured images.

    ``myocardium_dice_*``: at the contoured images with an epicardial contour (end-
    diastole); ``cavity_dice_*``: at every contoured image (end-diastole and -systole).
    ``largest_component``: the same Dice after :func:`largest_lv_component`.
    ``mcd_endo_mm_*``: per slice with an end-diastolic (epicardium drawn) and an
    end-systolic contour, the end-systolic endocardial contour warped to end-diastole by
    the motion from end-diastole to end-systole (the sequence from end-diastole forward,
    cyclically, every frame against end-diastole: :func:`motion_to_last`) against the
    end-diastolic one; ``mcd_endo_identity_mm_*`` the same without motion."""
    k_all = np.arange(len(patient.targets))
    imgs = patient.images[patient.label_slice, patient.label_phase]
    lab = predict_labels(model, imgs)
    lcc = np.stack([largest_lv_component(x) for x in lab])
    cav = [dice(lab[k] == MRLabel.LV_CAVITY, patient.cavity[k] > 0) for k in k_all]
    myo = [dice(lab[k] == MRLabel.LV_MYOCARDIUM, patient.myocardium[k] > 0) for k in k_all
           if patient.has_epicardium[k]]
    cav_lcc = [dice(lcc[k] == MRLabel.LV_CAVITY, patient.cavity[k] > 0) for k in k_all]
    myo_lcc = [dice(lcc[k] == MRLabel.LV_MYOCARDIUM, patient.myocardium[k] > 0) for k in k_all
               if patient.has_epicardium[k]]
    ed_cav = [c for c, k in zip(cav, k_all) if patient.has_epicardium[k]]
    es_cav = [c for c, k in zip(cav, k_all) if not patient.has_epicardium[k]]
    mcd, mcd0, slices = [], [], []
    n_phases = patient.images.shape[1]
    for s in np.unique(patient.label_slice):
        ks = k_all[patient.label_slice == s]
        ed = [k for k in ks if patient.has_epicardium[k]]
        es = [k for k in ks if not patient.has_epicardium[k]]
        if len(ed) != 1 or len(es) != 1:
            continue
        ed, es = ed[0], es[0]
        p_ed, p_es = int(patient.label_phase[ed]), int(patient.label_phase[es])
        order = [(p_ed + i) % n_phases for i in range((p_es - p_ed) % n_phases + 1)]
        phi = motion_to_last(model, patient.images[s, order])
        back = warp_points_back(patient.endo[es], phi)
        mcd.append(mean_contour_distance_mm(back, patient.endo[ed], patient.spacing_mm))
        mcd0.append(mean_contour_distance_mm(patient.endo[es], patient.endo[ed], patient.spacing_mm))
        slices.append(int(s))
    out = {"patient": patient.name, "ed_images": len(myo), "es_images": len(es_cav),
           "myocardium_dice_mean": float(np.mean(myo)) if myo else None,
           "myocardium_dice_min": float(np.min(myo)) if myo else None,
           "cavity_dice_mean": float(np.mean(cav)), "cavity_dice_min": float(np.min(cav)),
           "cavity_dice_ed_mean": float(np.mean(ed_cav)) if ed_cav else None,
           "cavity_dice_es_mean": float(np.mean(es_cav)) if es_cav else None,
           "myocardium_dice": [round(v, 4) for v in myo], "cavity_dice": [round(v, 4) for v in cav],
           "largest_component": {"myocardium_dice_mean": float(np.mean(myo_lcc)) if myo_lcc else None,
                                 "cavity_dice_mean": float(np.mean(cav_lcc))},
           "motion_slices": slices,
           "mcd_endo_mm_mean": float(np.mean(mcd)) if mcd else None,
           "mcd_endo_identity_mm_mean": float(np.mean(mcd0)) if mcd0 else None,
           "mcd_endo_mm": [round(v, 3) for v in mcd], "mcd_endo_identity_mm": [round(v, 3) for v in mcd0]}
    return out


def evaluate_phantoms(model: mr_joint.MRJointNet, ph: Phantoms, frames_per_clip: int = 4) -> dict:
    """Dice per label on ``frames_per_clip`` frames spread over each held-out phantom cine,
    and, where the truth displacement is there, the motion's end-point error in the first
    frame's myocardium (px, frame 0 -> frame t, every frame of the cine against the first,
    as the network runs; the truth's frame-to-frame displacements composed,
    :func:`displacement_from_first`)."""
    n, t = ph.frames.shape[:2]
    idx = np.linspace(0, t - 1, frames_per_clip).round().astype(int)
    imgs = ph.frames[:, idx].reshape(-1, *ph.frames.shape[2:])
    truth = ph.labels[:, idx].reshape(-1, *ph.labels.shape[2:])
    lab = predict_labels(model, imgs)
    out = {"clips": int(n), "frames": int(len(imgs))}
    for cls in (MRLabel.LV_CAVITY, MRLabel.LV_MYOCARDIUM, MRLabel.RV_CAVITY):
        d = [dice(a == cls, b == cls) for a, b in zip(lab, truth)]
        out[f"{cls.name.lower()}_dice_mean"] = float(np.mean(d))
        out[f"{cls.name.lower()}_dice_min"] = float(np.min(d))
    if ph.displacement is not None:
        model.eval()
        errs, zero = [], []
        with torch.no_grad():
            for i in range(n):
                _, flows = model.sequence(torch.from_numpy(ph.frames[i])[None], segment=False)
                f = flows[0].permute(0, 2, 3, 1).numpy()                   # (T-1, H, W, 2)
                tr = displacement_from_first(ph.displacement[i, :-1])
                m = ph.labels[i, 0] == MRLabel.LV_MYOCARDIUM
                errs.append(np.linalg.norm(f - tr, axis=-1)[:, m].mean())
                zero.append(np.linalg.norm(tr, axis=-1)[:, m].mean())
        out["epe_myocardium_px"] = float(np.mean(errs))
        out["epe_zero_flow_myocardium_px"] = float(np.mean(zero))
    return out


# ------------------------------------------------------------------ training
STAGES = ("motion", "segmentation", "joint", "refine_motion")


def _set_trainable(model: mr_joint.MRJointNet, stage: str) -> list[torch.nn.Parameter]:
    parts = {"motion": (model.encoder, model.motion_branch),
             "segmentation": (model.segmentation_branch,),
             "joint": (model.encoder, model.motion_branch, model.segmentation_branch),
             "refine_motion": (model.motion_branch,)}[stage]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in parts for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def train_stage(model: mr_joint.MRJointNet, stage: str, steps: int, sampler: Sampler, args,
                device: torch.device) -> list[dict]:
    """One step of the schedule; returns a loss summary every ``max(1, steps // 10)`` steps."""
    if steps <= 0:
        return []
    if stage == "refine_motion":
        return refine_motion_stage(model, steps, sampler, args, device)
    run = _StageRun(model, stage, steps, args.lr, args.clip)
    for _ in range(steps):
        loss = torch.zeros((), device=device)
        parts = {}
        need_seq = (stage == "motion" or (stage == "joint" and args.motion_weight > 0) or args.warp_seg > 0
                    or args.warp_truth > 0)
        if need_seq:
            seq, seq_codes = sampler.sequences(args.batch_size, args.sequence_length, args.labelled_start)
            seq, seq_codes = seq.to(device), seq_codes.to(device)
            if stage == "segmentation":
                with torch.no_grad():
                    _, flows = model.sequence(seq, segment=False)
                feats = model.encode(seq.reshape(-1, 1, *seq.shape[-2:]))
                logits = model.segment([f.detach() for f in feats], seq.shape[-2:],
                                       seq.reshape(-1, 1, *seq.shape[-2:])).reshape(
                    *seq.shape[:2], len(mr_joint.CLASSES), *seq.shape[-2:])
            else:
                logits, flows = model.sequence(seq, segment=stage == "joint" and (args.warp_seg > 0 or args.warp_truth > 0))
            if stage == "motion" or (stage == "joint" and args.motion_weight > 0):
                ml, mparts = motion_loss(seq, flows, args.smooth_spatial, args.smooth_temporal)
                if args.label_motion > 0 and (stage == "motion" or args.label_motion_in == "all"):
                    lm = label_motion_loss(seq_codes, flows)
                    ml = ml + args.label_motion * lm
                    mparts["label_motion"] = float(lm.detach())
                loss = loss + args.motion_weight * ml if stage == "joint" else loss + ml
                parts.update(mparts)
            if stage != "motion" and args.warp_seg > 0:
                ws = warped_segmentation_loss(logits, flows.detach() if stage == "segmentation" else flows)
                loss = loss + args.warp_seg * ws
                parts["warp_seg"] = float(ws.detach())
            if stage != "motion" and args.warp_truth > 0:
                wt = warped_truth_loss(logits, flows.detach() if stage == "segmentation" else flows, seq_codes)
                loss = loss + args.warp_truth * wt
                parts["warp_truth"] = float(wt.detach())
        if stage in ("segmentation", "joint"):
            x, codes = sampler.labelled(args.seg_batch_size)
            x, codes = x.to(device), codes.to(device)
            sl = partial_label_loss(model.segment(model.encode(x), x.shape[-2:], x), codes, args.dice_weight)
            loss = loss + sl
            parts["seg"] = float(sl.detach())
        run.update(loss, parts)
    return run.close()


class _StageRun:
    """One step of the schedule: its trainable parts, optimiser (AdamW, one-cycle learning
    rate, gradient-norm clipping), progress bar and loss summary every ``max(1, steps //
    10)`` steps."""

    def __init__(self, model: mr_joint.MRJointNet, stage: str, steps: int, lr: float, clip: float):
        self.model, self.clip = model, clip
        self.params = _set_trainable(model, stage)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=1e-4)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=lr, total_steps=steps,
                                                         pct_start=0.1)
        self.stage, self.steps, self.every = stage, steps, max(1, steps // 10)
        self.history: list[dict] = []
        self.acc: dict[str, float] = {}
        self.done = 0
        self.bar = common.progress(total=steps, desc=f"mr {stage}")
        self.t0 = time.perf_counter()
        model.train()

    def update(self, loss: torch.Tensor, parts: dict[str, float]) -> None:
        """One optimiser step on ``loss``; ``parts`` (its terms) join the summary."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.sched.step()
        parts["loss"] = float(loss.detach())
        for k, v in parts.items():
            self.acc[k] = self.acc.get(k, 0.0) + v
        self.done += 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{parts['loss']:.4f}")
        if self.done % self.every == 0 or self.done == self.steps:
            m = ((self.done - 1) % self.every) + 1
            self.history.append({"stage": self.stage, "step": self.done,
                                 **{k: round(v / m, 6) for k, v in self.acc.items()}})
            self.bar.write(f"mr: {self.stage} step {self.done}/{self.steps}: " + ", ".join(
                f"{k} {v / m:.4g}" for k, v in self.acc.items()) + f" ({time.perf_counter() - self.t0:.0f} s)")
            self.acc = {}

    def close(self) -> list[dict]:
        """End the step: every parameter trainable again, the model in eval mode."""
        self.bar.close()
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.eval()
        return self.history


def refine_motion_stage(model: mr_joint.MRJointNet, steps: int, sampler: Sampler, args,
                        device: torch.device) -> list[dict]:
    """Step 4 (``--refine-motion-steps``): the motion branch alone, the encoder and the
    segmentation branch frozen, so the labels the network gives stay exactly those of
    step 3. Loss: the motion loss, plus ``--refine-label-motion`` times the labels the
    motion carries (:func:`label_motion_loss`) and ``--refine-warp-truth`` times Qin et
    al.'s weak supervision (:func:`warped_truth_loss`; the frozen branch's label
    probabilities, warped by the flow, against a labelled reference). Real sequences start
    at a contoured phase with probability ``--refine-labelled-start``."""
    run = _StageRun(model, "refine_motion", steps, args.refine_lr, args.clip)
    for _ in range(steps):
        seq, seq_codes = sampler.sequences(args.batch_size, args.sequence_length, args.refine_labelled_start)
        seq, seq_codes = seq.to(device), seq_codes.to(device)
        logits, flows = model.sequence(seq, segment=args.refine_warp_truth > 0)
        loss, parts = motion_loss(seq, flows, args.smooth_spatial, args.smooth_temporal)
        if args.refine_label_motion > 0:
            lm = label_motion_loss(seq_codes, flows)
            loss = loss + args.refine_label_motion * lm
            parts["label_motion"] = float(lm.detach())
        if args.refine_warp_truth > 0:
            wt = warped_truth_loss(logits.detach(), flows, seq_codes)
            loss = loss + args.refine_warp_truth * wt
            parts["warp_truth"] = float(wt.detach())
        run.update(loss, parts)
    return run.close()


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        ROLE, help="train the joint MR segmentation + motion network (Qin et al. 2018)",
        description="Train engines.nets.mr_joint on MR phantom cines (exact labels) and the "
                    "Sunnybrook patients (expert ED/ES contours; every frame for the motion loss) "
                    "with Qin et al. 2018's losses and three-step schedule: (1) unsupervised motion "
                    "(MSE of the warped frame + Huber smoothness in space and time), (2) "
                    "segmentation on the frozen encoder (cross-entropy with partial labels + soft "
                    "Dice on labelled frames, warped-segmentation loss on sequences), (3) joint; "
                    "optionally (4) the motion branch alone, the rest frozen, on the motion loss and "
                    "the labels the motion carries (--refine-motion-steps; --init starts from "
                    "trained weights). --holdout-patient leaves one patient out of all training and judges the "
                    "network on it (myocardium / cavity Dice at the contoured ED / ES images, "
                    "mean contour distance of the ES endocardium warped to ED). Writes the state "
                    "dict and a JSON record (command, data, metrics, sha256).")
    p.add_argument("--sunnybrook", type=Path, default=None, metavar="DIR",
                   help="the Sunnybrook folder (dicoms/, contours/, link.csv); default: "
                        "../shared/data/sunnybrook beside the repository, else /work/shared/data/sunnybrook")
    p.add_argument("--patients", default=",".join(SUNNYBROOK_PATIENTS), metavar="ID[,ID]",
                   help="real patients to use (default %(default)s); 'none' trains on phantoms only")
    p.add_argument("--holdout-patient", metavar="ID",
                   help="leave this patient out of all training (labels and motion) and evaluate on it")
    p.add_argument("--samples", type=int, default=60,
                   help="phantom cines (20 frames each) from the 'train' split (default %(default)s)")
    p.add_argument("--test-samples", type=int, default=8,
                   help="held-out phantom cines from the 'test' split for Dice and EPE (default %(default)s)")
    p.add_argument("--motion-steps", type=int, default=1200, help="step 1: motion only (default %(default)s)")
    p.add_argument("--seg-steps", type=int, default=1000,
                   help="step 2: segmentation on the frozen encoder (default %(default)s)")
    p.add_argument("--joint-steps", type=int, default=2500, help="step 3: everything (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per step (default %(default)s)")
    p.add_argument("--sequence-length", type=int, default=10,
                   help="frames per sequence, the first the motion's reference; 10 covers "
                        "end-diastole to end-systole of a 20-phase cine (default %(default)s)")
    p.add_argument("--seg-batch-size", type=int, default=12, help="labelled frames per step (default %(default)s)")
    p.add_argument("--crop", type=int, default=128,
                   help="training crop side in pixels, a multiple of 16, around the LV (default %(default)s)")
    p.add_argument("--real-fraction", type=float, default=0.5,
                   help="share of real-patient samples in each batch (default %(default)s)")
    ints = lambda v: tuple(int(x) for x in v.split(","))  # noqa: E731
    p.add_argument("--widths", type=ints, default=None, metavar="W1,W2,W3,W4",
                   help="encoder widths (default: engines.nets.mr_joint.DEFAULTS, what the engine builds)")
    p.add_argument("--enc-extra", type=ints, default=None, metavar="E1,E2,E3,E4",
                   help="extra 3x3 convolutions per encoder level (default: DEFAULTS)")
    p.add_argument("--decoder", type=ints, default=None, metavar="D3,D2,D1",
                   help="segmentation decoder widths at 1/8, 1/4, 1/2 (default: DEFAULTS)")
    p.add_argument("--up1-kernel", type=int, choices=(1, 3), default=None,
                   help="kernel of the decoder's 1/2 step (default: DEFAULTS)")
    p.add_argument("--full-res", type=int, default=None, metavar="C",
                   help="channels of the full-resolution decoder step, 0 for none (default: DEFAULTS)")
    p.add_argument("--augment", choices=AUGMENTS, default="strong",
                   help="training augmentation: 'basic' (random affine, gain / gamma / Gaussian noise) or "
                        "'strong' (any rotation, wider zoom, stretch, elastic; contrast curve, bias field, "
                        "blur / sharpen, Rician noise: engines.train.mr.augment_strong) (default %(default)s)")
    p.add_argument("--sequence-augment", choices=AUGMENTS, default="basic",
                   help="augmentation of the sequences the motion and warped-segmentation losses see: "
                        "the strong recipe's intensity changes left the motion no better than zero flow "
                        "on held-out phantoms (docs/benchmarks.md, issue 13) (default %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak one-cycle learning rate per step (default %(default)s)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (default %(default)s)")
    p.add_argument("--smooth-spatial", type=float, default=0.01,
                   help="weight of the Huber penalty of the flow's spatial gradients (default %(default)s)")
    p.add_argument("--smooth-temporal", type=float, default=0.005,
                   help="weight of the Huber penalty of the flow's change between frame pairs (default %(default)s)")
    p.add_argument("--label-motion", type=float, default=0.0,
                   help="weight, beside the motion loss, of the labels the motion carries: each "
                        "labelled frame's LV cavity and myocardium warped onto the sequence's "
                        "reference, soft Dice against the reference's (the real patients' ED and "
                        "ES contours, every phantom frame) (default %(default)s)")
    p.add_argument("--label-motion-in", choices=("motion", "all"), default="all",
                   help="the steps --label-motion joins: step 1 only ('motion') or steps 1 and 3 "
                        "('all') (default %(default)s)")
    p.add_argument("--labelled-start", type=float, default=0.0,
                   help="share of real sequences that start at a contoured phase (end-diastole "
                        "or end-systole), so that --label-motion sees real label pairs "
                        "(default %(default)s)")
    p.add_argument("--warp-seg", type=float, default=0.1,
                   help="weight of the warped-segmentation loss (default %(default)s)")
    p.add_argument("--warp-truth", type=float, default=0.0,
                   help="weight of Qin et al.'s weakly supervised term: later frames' predicted labels "
                        "warped onto a labelled reference, cross-entropy against its labels (default %(default)s)")
    p.add_argument("--motion-weight", type=float, default=10.0,
                   help="weight of the motion loss in step 3, where the segmentation losses are "
                        "~100x larger (default %(default)s)")
    p.add_argument("--dice-weight", type=float, default=1.0,
                   help="weight of the soft Dice beside the cross-entropy (default %(default)s)")
    p.add_argument("--refine-motion-steps", type=int, default=0,
                   help="step 4: the motion branch alone on the frozen encoder and segmentation "
                        "branch (the labels stay step 3's exactly) (default %(default)s: none)")
    p.add_argument("--refine-label-motion", type=float, default=0.0,
                   help="step 4: weight of the labels the motion carries, as --label-motion "
                        "(default %(default)s)")
    p.add_argument("--refine-warp-truth", type=float, default=0.0,
                   help="step 4: weight of Qin et al.'s weak supervision, as --warp-truth, the "
                        "frozen segmentation's labels warped by the motion (default %(default)s)")
    p.add_argument("--refine-labelled-start", type=float, default=0.0,
                   help="step 4: share of real sequences that start at a contoured phase, as "
                        "--labelled-start (default %(default)s)")
    p.add_argument("--refine-lr", type=float, default=1e-3,
                   help="step 4: peak one-cycle learning rate (default %(default)s)")
    p.add_argument("--init", type=Path, default=None, metavar="PT",
                   help="start from these weights (a state dict of the same architecture, e.g. "
                        "to run step 4 alone on trained weights with --motion-steps 0 "
                        "--seg-steps 0 --joint-steps 0); its sha256 goes into the record")
    common.add_run_arguments(p, ROLE, mr_joint.SPEC.weights_file)
    p.set_defaults(func=run, read_patient=None)
    return p


def default_sunnybrook() -> Path:
    here = Path(__file__).resolve().parents[2]
    for root in (here.parent / "shared", Path("/work/shared")):
        if (root / "data" / "sunnybrook" / "link.csv").is_file():
            return root / "data" / "sunnybrook"
    return here.parent / "shared" / "data" / "sunnybrook"


def load_patients(args) -> tuple[list[Patient], Patient | None, dict]:
    names = [] if args.patients.strip().lower() == "none" else [n.strip() for n in args.patients.split(",") if n.strip()]
    hold = args.holdout_patient
    if hold and hold not in names:
        raise SystemExit(f"--holdout-patient {hold}: not one of --patients {','.join(names) or 'none'}")
    if not names:
        return [], None, {"patients": []}
    if args.read_patient is None:
        raise SystemExit("real patients need the Sunnybrook reader of streamer.io: run this as "
                         "`cardiostream engines train mr ...` (or pass --patients none)")
    root = args.sunnybrook or default_sunnybrook()
    loaded = {n: Patient.from_arrays(n, args.read_patient(root, n)) for n in names}
    train = [loaded[n] for n in names if n != hold]
    rec = {"sunnybrook": str(root), "train_patients": [p.name for p in train], "holdout_patient": hold,
           "labelled_images": {p.name: int(len(p.targets)) for p in train},
           "motion_frames": {p.name: int(np.prod(p.images.shape[:2])) for p in train}}
    return train, (loaded[hold] if hold else None), rec


def run(args: argparse.Namespace) -> int:
    threads = common.set_threads(args.threads)
    device = common.pick_device(args.device)
    g = common.seed_everything(args.seed)
    clock = common.Stopwatch()
    header = common.record_header(args, ROLE)
    if args.crop % 16 or not 32 <= args.crop <= mr_joint.INPUT_SIZE[0]:
        raise SystemExit(f"--crop {args.crop}: a multiple of 16 between 32 and {mr_joint.INPUT_SIZE[0]}")
    train_patients, holdout, real_rec = load_patients(args)
    phantoms, ph_rec = load_phantoms("train", args.samples)
    data_s = clock.seconds
    print(f"mr: data ready in {data_s:.0f} s: {len(phantoms.frames)} phantom cines, real "
          f"{[p.name for p in train_patients]}, held out {holdout.name if holdout else None}", flush=True)

    arch = {k: getattr(args, k) for k in ("widths", "enc_extra", "decoder", "up1_kernel", "full_res")
            if getattr(args, k, None) is not None}
    model = mr_joint.build(**arch)
    init_rec = None
    if args.init is not None:
        try:
            common.load_state(model, args.init)
        except (OSError, RuntimeError) as e:
            raise SystemExit(f"--init {args.init}: not a state dict of this network "
                             f"({model.hparams}): {str(e).splitlines()[0]}") from e
        # the weights' own record (how they were made), when the one beside them is theirs,
        # travels in this one's
        digest = common.sha256_file(args.init)
        beside = Path(args.init).with_name(f"{ROLE}.json")
        made = json.loads(beside.read_text()) if beside.is_file() else None
        made = made if made and made.get("weights_sha256") == digest else None
        seen = ((made or {}).get("data") or {}).get("train_patients") or []
        if args.holdout_patient and args.holdout_patient in seen:
            raise SystemExit(f"--init {args.init}: these weights were trained on "
                             f"{args.holdout_patient}, the patient --holdout-patient leaves out")
        init_rec = {"path": str(args.init), "sha256": digest, "record": made}
        print(f"mr: starting from {args.init}", flush=True)
    model = model.to(device)
    print(f"mr: network {model.hparams}, {sum(p.numel() for p in model.parameters())} parameters", flush=True)
    sampler = Sampler(train_patients, phantoms, args.crop, args.real_fraction, g, args.augment,
                      args.sequence_augment)
    history, stage_s = [], {}
    for stage, steps in zip(STAGES, (args.motion_steps, args.seg_steps, args.joint_steps,
                                     args.refine_motion_steps)):
        t0 = clock.seconds
        h = train_stage(model, stage, steps, sampler, args, device)
        stage_s[stage] = round(clock.seconds - t0, 1)
        history += h
        if h:
            print(f"mr: {stage} {steps} steps in {stage_s[stage]:.0f} s, last: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in h[-1].items() if k not in ("stage", "step")), flush=True)
    train_s = clock.seconds - data_s
    model = model.cpu().eval()

    test_ph, te_rec = load_phantoms("test", args.test_samples, motion=True)
    test = {"phantoms": evaluate_phantoms(model, test_ph)}
    if holdout is not None:
        test["holdout"] = evaluate_patient(model, holdout)
    fit = {p.name: evaluate_patient(model, p) for p in train_patients}
    record = {**header, "arch": mr_joint.SPEC.arch, "input": list(mr_joint.SPEC.input.shape),
              "hparams": model.hparams, "threads": threads, "device": str(device),
              "normalisation": mr_joint.SPEC.normalisation,
              "data": {"train_phantoms": ph_rec, "test_phantoms": te_rec, **real_rec},
              "init": init_rec,
              "schedule": {"motion_steps": args.motion_steps, "seg_steps": args.seg_steps,
                           "joint_steps": args.joint_steps,
                           "refine_motion_steps": args.refine_motion_steps},
              "losses": {"motion": "MSE(warp(I_t+1, f_t), I_t) + smooth_spatial * Huber(grad f) + "
                                   "smooth_temporal * Huber(f_t+1 - f_t)",
                         "segmentation": "partial-label cross-entropy + dice_weight * soft Dice "
                                         "(cavity, myocardium) + warp_seg * warped-segmentation CE",
                         "refine_motion": "motion + refine_label_motion * label-motion soft Dice + "
                                          "refine_warp_truth * warped-truth CE (motion branch only)",
                         "huber_delta": HUBER_DELTA},
              "history": history, "test": test, "training_patients_fit": fit,
              "wall_s": {"data": round(data_s, 1), **stage_s, "train": round(train_s, 1),
                         "total": round(clock.seconds, 1)}}
    js = common.save_weights(model, ROLE, record, args.out)
    ph = test["phantoms"]
    print(f"mr: held-out phantoms Dice cavity {ph['lv_cavity_dice_mean']:.4f} myocardium "
          f"{ph['lv_myocardium_dice_mean']:.4f} RV {ph['rv_cavity_dice_mean']:.4f}, EPE myocardium "
          f"{ph['epe_myocardium_px']:.3f} px (zero flow {ph['epe_zero_flow_myocardium_px']:.3f})", flush=True)
    if holdout is not None:
        h = test["holdout"]
        print(f"mr: held-out patient {h['patient']}: myocardium Dice {h['myocardium_dice_mean']:.4f} "
              f"(ED, {h['ed_images']} images), cavity Dice {h['cavity_dice_mean']:.4f} (ED+ES) "
              f"[largest LV component: {h['largest_component']['myocardium_dice_mean']:.4f} / "
              f"{h['largest_component']['cavity_dice_mean']:.4f}], "
              f"ES->ED endocardial MCD {h['mcd_endo_mm_mean']:.3f} mm (no motion "
              f"{h['mcd_endo_identity_mm_mean']:.3f} mm)", flush=True)
    print(f"mr: train {train_s:.0f} s; wrote {args.out} and {js}", flush=True)
    return 0


def main(argv=None) -> int:
    return common.trainer_main(add_parser, ROLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
