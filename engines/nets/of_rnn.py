"""Infarct delineation from motion in non-contrast cine MR: OF-RNN (Xu et al. 2018).

"Direct delineation of myocardial infarction without contrast agents using a joint motion
feature learning architecture", C. Xu et al., Medical Image Analysis 50, 2018.  Every pixel of
the LV region of interest of one short-axis slice, followed over one heart beat, is classed
as remote (not infarcted) or infarcted (:data:`CLASSES`) from how it and its neighbourhood
move, with no contrast agent.  The parts, in the order a pixel meets them:

* :class:`PatchLSTM` -- local motion, the paper's patch-based LSTM-RNN: the pixel's
  :data:`PATCH_PX` x :data:`PATCH_PX` patch in every frame, projected linearly to ``embed``
  values (``projection``: a Conv2d(1, E, 11, padding=5) applied to each frame, the same
  arithmetic as flattening the patch into a linear layer, computed for all pixels at once),
  then a stacked LSTM (``lstm``: ``lstm_layers`` layers of ``hidden`` units) over the beat,
  every pixel its own sequence; the top layer's last hidden state is the local feature;
* :class:`FlowTrajectory` -- global motion, the paper's optical-flow trajectory: per frame,
  the displacement magnitude and orientation (cos, sin of the flow angle) of each of the
  pixel's 3 x 3 neighbours (9 x 3 = 27 values), over the beat, flattened and encoded by one
  fully connected layer (``encoder``: 27 x T0 -> ``trajectory_width``, ReLU);
* :class:`StackedAutoEncoder` -- the fusion: the local and global features concatenated per
  pixel (``hidden + trajectory_width`` values: "the feature"), an encoder of fully connected
  layers with ReLU (``encoder_widths``, 128 -> 64 -> 32 by default) and a mirrored decoder
  that reconstructs the feature (used only by :meth:`OFRNN.forward_with_reconstruction`, for
  the trainer's auto-encoder loss, :func:`reconstruction_loss`);
* ``classifier`` -- the softmax classifier: one fully connected layer from the code to the 2
  logits of the pixel (no softmax in forward: :func:`infarct_probability`).

Every fully connected layer works on one pixel's vector (``nn.Linear`` on a batch of pixels,
the same as a 1x1 convolution over the ROI), so pixels are independent of each other: a
pixel's logits depend only on its 11 x 11 patch of the frames and its 3 x 3 neighbourhood of
the flow (no BatchNorm, no dropout; train and eval modes compute the same).

Input (caller's job: crop and resample the LV region to :data:`ROI_PX` x :data:`ROI_PX`):

* ``frames`` ``(N, T, 64, 64)`` float32, intensities in [0, 1] (no normalisation here), T >=
  :data:`MIN_FRAMES` frames of one beat (20, 25, 30, 50 ... any count), frame 0 the
  ECG-triggered start of the beat (end-diastole), the beat treated as circular;
* ``flow`` ``(N, T, 2, 64, 64)`` float32, optical flow from frame t to frame t + 1 (the last
  to the first), channels (dx, dy) = (column, row) displacement in ROI pixels;
* ``mask`` (optional) ``(N, 64, 64)`` bool: compute only these pixels (the myocardium, ~10-20
  % of the ROI; the LSTM then runs on those pixels only, which is most of the time saved);
  every other pixel gets :data:`OUTSIDE_LOGITS` (infarct probability 0).  A masked pixel's
  logits equal the unmasked network's (to float rounding).

Output: logits ``(N, 2, 64, 64)`` in :data:`CLASSES` order; the caller masks to the myocardium.

Choices made here where the paper is silent (or fixed at one frame count):

* **Beat time.**  The paper's cines all have 25 frames; here T varies, so both branches work
  in beat time at ``reference_frames`` (T0 = 25) samples, and at T = T0 the input is used as it
  is.  Frames are point samples at beat times t / T: the LSTM's sequence is the frames
  re-sampled to T0 by circular linear interpolation (:func:`point_resampling`, sample j at
  beat time j / T0).  Flow t -> t + 1 belongs to the interval [t / T, (t + 1) / T]: the flow
  is first scaled by T / T0 (displacement per 1/T0 of a beat, so a beat at 50 frames has the
  magnitudes of the same beat at 25), and its per-frame features are averaged over T0 equal
  bins of the beat, each frame weighted by its interval's overlap with the bin
  (:func:`interval_resampling`: the box filter that never aliases at 50 frames and holds
  values at 2).  Without re-sampling, an LSTM trained at 20-25 frames meets a different time
  scale per step at 50 (the lesson of :mod:`engines.nets.cardiac_mos`), and the trajectory
  could not be flattened into one fixed-size layer; this also caps the LSTM's cost at T0
  steps.  (The other way, a second LSTM over the flow features, was not taken: it would
  add about half again the recurrent cost, for a branch that is one linear layer here.)
* **Local readout: the last hidden state**, not the mean over time: frame 0 is the
  triggered end-diastole, so after T0 steps the last state has read the whole cycle in
  order, while a mean weighs in the early states that have seen only the start of it.
* **Orientation** is ``(dx, dy) / sqrt(dx^2 + dy^2 + eps^2)`` (eps = :data:`FLOW_EPS_PX`
  pixel per 1/T0 beat, after the scaling): cos and sin of the angle for real motion, tending
  to (0, 0) for none, where the angle is undefined (no jump between (1, 0) and the angle of
  noise).  Magnitude is sqrt(dx^2 + dy^2) in the same units.
* **Borders**: the 11 x 11 patches and the 3 x 3 flow neighbourhoods are zero-padded at
  the ROI's edge (the myocardium sits well inside a ROI centred on the LV).
* **Decoder**: the encoder's widths reversed, ReLU between layers, a linear last layer (the
  feature has negative values: the LSTM's tanh); :func:`reconstruction_loss` compares it
  with the feature detached (the auto-encoder loss shapes the auto-encoder, not the branches
  that feed it: they could otherwise shrink the feature to make it easy to reconstruct).

Size (:data:`DEFAULTS`): E = 16, 2 LSTM layers of H = 32, trajectory 27 x 25 -> 32, feature
64, encoder 64 -> 128 -> 64 -> 32, decoder 32 -> 64 -> 128 -> 64, 2 logits: 75.8 k parameters
(patch projection 1.9 k, LSTM 14.8 k, trajectory encoder 21.6 k, auto-encoder 37.3 k of which
the decoder 18.7 k, classifier 66).  Per pixel and beat (at T0 = 25, any T): 48 k
multiply-adds in the projection, 358 k in the LSTM, 22 k in the trajectory encoder, 18 k in the
auto-encoder's encoder (18 k more in the decoder, training only): ~0.45 M, so ~1.8 G
multiply-adds (3.7 GFLOP) for the whole 64 x 64 ROI, 80 % of it the LSTM; with a mask only the
projection (0.2 G) stays at full size.  One slice-beat of 25 frames (N = 1, eager fp32 torch,
no grad) took a median 0.09 s for the whole ROI and 0.02 s with a ring mask of 15 % of the
pixels on one thread of this project's 2-core shared CPU while another training job ran on
it (medians of 7 runs).  Two threads were slower there, not faster: 0.2-0.9 s for the whole
ROI and 0.03-0.05 s (up to ~1 s) masked, every small per-step LSTM operation waiting for the
busy second core; on a shared CPU run it on one thread (:mod:`engines.backends.threads`).
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

#: classes of the logits, in order: remote (not infarcted) myocardium, infarct
CLASSES = ("remote", "infarct")
#: side of the LV region of interest the network takes, pixels (the caller crops and resamples)
ROI_PX = 64
#: side of the local-motion patch around each pixel, pixels
PATCH_PX = 11
#: side of the flow neighbourhood of the global-motion trajectory, pixels
FLOW_NEIGHBOURHOOD_PX = 3
#: values per neighbour and frame of the trajectory: magnitude, cos and sin of the angle
FLOW_VALUES = 3
#: the fewest frames of a beat the network accepts
MIN_FRAMES = 2
#: eps of the orientation's (dx, dy) / sqrt(dx^2 + dy^2 + eps^2), pixels per 1/T0 beat
FLOW_EPS_PX = 0.01
#: logits given to the pixels outside a mask: remote certain (infarct probability 0 in float32)
OUTSIDE_LOGITS = (0.0, -1.0e4)

#: default sizes of :func:`build`: patch embedding E, LSTM hidden H and layers, trajectory
#: encoding width, the auto-encoder's encoder widths (decoder: mirrored), beat-time samples T0
DEFAULTS = dict(embed=16, hidden=32, lstm_layers=2, trajectory_width=32,
                encoder_widths=(128, 64, 32), reference_frames=25)


@lru_cache(maxsize=64)
def _point_matrix(frames: int, samples: int) -> tuple[tuple[float, ...], ...]:
    rows = []
    for j in range(samples):
        position = Fraction(j * frames, samples)                    # in frames
        lo = int(position)
        frac = position - lo
        row = [Fraction(0)] * frames
        row[lo] += 1 - frac
        row[(lo + 1) % frames] += frac
        rows.append(tuple(float(v) for v in row))
    return tuple(rows)


@lru_cache(maxsize=64)
def _interval_matrix(frames: int, samples: int) -> tuple[tuple[float, ...], ...]:
    rows = []
    for j in range(samples):
        a, b = Fraction(j, samples), Fraction(j + 1, samples)        # the bin, in beats
        row = []
        for t in range(frames):
            overlap = min(b, Fraction(t + 1, frames)) - max(a, Fraction(t, frames))
            row.append(float(max(overlap, Fraction(0)) * samples))
        rows.append(tuple(row))
    return tuple(rows)


def point_resampling(frames: int, samples: int) -> torch.Tensor:
    """(samples, frames) matrix taking point samples of one beat at beat times t / ``frames``
    to beat times j / ``samples``: linear interpolation, circular (the frame after the last is
    the first).  The identity when the counts are equal; every row sums to 1."""
    return torch.tensor(_point_matrix(frames, samples), dtype=torch.float64)


def interval_resampling(frames: int, samples: int) -> torch.Tensor:
    """(samples, frames) matrix taking values over the intervals [t, t + 1) / ``frames`` of
    one beat to the mean over the bins [j, j + 1) / ``samples``: each interval weighted by its
    overlap with the bin (the box filter).  The identity when the counts are equal; every row
    sums to 1."""
    return torch.tensor(_interval_matrix(frames, samples), dtype=torch.float64)


def _resample(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """(N, T, ...) -> (N, S, ...) with an (S, T) re-sampling matrix (``x`` itself when S == T)."""
    if matrix.shape[0] == matrix.shape[1]:                          # equal counts: the identity
        return x
    m = matrix.to(dtype=x.dtype, device=x.device)
    return torch.einsum("st,nt...->ns...", m, x)


def flow_values(flow: torch.Tensor, reference_frames: int = DEFAULTS["reference_frames"]
                ) -> torch.Tensor:
    """(N, T, 2, H, W) flow -> (N, T, 3, H, W): magnitude, cos and sin of the angle of the flow
    scaled to displacement per 1/``reference_frames`` beat (module docstring: orientation)."""
    f = flow * (flow.shape[1] / reference_frames)
    magnitude = f.square().sum(2, keepdim=True)
    orientation = f * torch.rsqrt(magnitude + FLOW_EPS_PX ** 2)
    return torch.cat([magnitude.sqrt(), orientation], 2)


def trajectory(flow: torch.Tensor, reference_frames: int = DEFAULTS["reference_frames"]
               ) -> torch.Tensor:
    """(N, T, 2, H, W) flow -> (N, T0, 27, H, W): each pixel's 3 x 3 neighbours' magnitude,
    cos and sin (the 27 values: value-major, neighbours in row-major order, zero outside the
    ROI) in T0 = ``reference_frames`` bins of beat time (:func:`interval_resampling`)."""
    n, t, _, h, w = flow.shape
    values = _resample(flow_values(flow, reference_frames),
                       interval_resampling(t, reference_frames))         # (N, T0, 3, H, W)
    k = FLOW_NEIGHBOURHOOD_PX
    cols = F.unfold(values.reshape(n * reference_frames, FLOW_VALUES, h, w), k, padding=k // 2)
    return cols.reshape(n, reference_frames, FLOW_VALUES * k * k, h, w)


class PatchLSTM(nn.Module):
    """Local motion: the patch-based LSTM-RNN.  Frames (N, T0, H, W) in beat time -> each
    pixel's 11 x 11 patch projected to ``embed`` values per frame (``projection``), the
    sequence of a pixel read by a stacked LSTM (``lstm``), its top layer's last hidden state
    the pixel's local feature (``hidden`` values)."""

    def __init__(self, embed: int = DEFAULTS["embed"], hidden: int = DEFAULTS["hidden"],
                 layers: int = DEFAULTS["lstm_layers"]):
        super().__init__()
        self.projection = nn.Conv2d(1, embed, PATCH_PX, padding=PATCH_PX // 2)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, T0, H, W) -> (N, H, W, T0, E): every pixel's patch projection per frame."""
        n, t, h, w = frames.shape
        e = self.projection(frames.reshape(n * t, 1, h, w))             # (N T0, E, H, W)
        return e.reshape(n, t, -1, h, w).permute(0, 3, 4, 1, 2)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """(P, T0, E) pixel sequences (from :meth:`embed`) -> (P, H) local features."""
        _, (h_n, _) = self.lstm(sequences.contiguous())
        return h_n[-1]


class FlowTrajectory(nn.Module):
    """Global motion: the optical-flow trajectory of a pixel's 3 x 3 neighbourhood over the
    beat (:func:`trajectory`, 27 x T0 values) encoded by one fully connected layer + ReLU."""

    def __init__(self, width: int = DEFAULTS["trajectory_width"],
                 reference_frames: int = DEFAULTS["reference_frames"]):
        super().__init__()
        self.reference_frames = reference_frames
        self.values = FLOW_VALUES * FLOW_NEIGHBOURHOOD_PX ** 2 * reference_frames
        self.encoder = nn.Linear(self.values, width)

    def trajectories(self, flow: torch.Tensor) -> torch.Tensor:
        """(N, T, 2, H, W) -> (N, H, W, 27 T0): every pixel's flattened trajectory."""
        x = trajectory(flow, self.reference_frames)                    # (N, T0, 27, H, W)
        n, _, _, h, w = x.shape
        return x.permute(0, 3, 4, 1, 2).reshape(n, h, w, self.values)

    def forward(self, trajectories: torch.Tensor) -> torch.Tensor:
        """(P, 27 T0) -> (P, width) global features."""
        return F.relu(self.encoder(trajectories))


def _mlp(widths: list[int], last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if last_relu or k < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class StackedAutoEncoder(nn.Module):
    """The fusion: ``encoder`` (fully connected + ReLU, ``features`` -> ``widths``) gives the
    code the classifier reads; ``decoder`` (the widths reversed, ReLU between, linear last)
    reconstructs the ``features``-value input from the code."""

    def __init__(self, features: int, widths=DEFAULTS["encoder_widths"]):
        super().__init__()
        widths = [int(features), *widths]
        self.encoder = _mlp(widths, last_relu=True)
        self.decoder = _mlp(widths[::-1], last_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class OFRNN(nn.Module):
    """OF-RNN: frames (N, T, 64, 64) and flow (N, T, 2, 64, 64) -> logits (N, 2, 64, 64)
    (module docstring); ``mask`` (N, 64, 64) bool: compute only those pixels."""

    def __init__(self, embed: int = DEFAULTS["embed"], hidden: int = DEFAULTS["hidden"],
                 lstm_layers: int = DEFAULTS["lstm_layers"],
                 trajectory_width: int = DEFAULTS["trajectory_width"],
                 encoder_widths=DEFAULTS["encoder_widths"],
                 reference_frames: int = DEFAULTS["reference_frames"]):
        super().__init__()
        encoder_widths = tuple(int(w) for w in encoder_widths)
        sizes = dict(embed=embed, hidden=hidden, lstm_layers=lstm_layers,
                     trajectory_width=trajectory_width, reference_frames=reference_frames)
        bad = [f"{k}={v}" for k, v in sizes.items() if int(v) < 1]
        if bad or not encoder_widths or min(encoder_widths) < 1:
            raise ValueError(f"sizes must be positive: {', '.join(bad) or ''}"
                             f"{' ' if bad else ''}encoder_widths={encoder_widths}")
        self.hparams = dict(sizes, encoder_widths=encoder_widths)
        self.reference_frames = int(reference_frames)
        self.local_motion = PatchLSTM(embed, hidden, lstm_layers)
        self.global_motion = FlowTrajectory(trajectory_width, reference_frames)
        self.feature_width = hidden + trajectory_width
        self.auto_encoder = StackedAutoEncoder(self.feature_width, encoder_widths)
        self.classifier = nn.Linear(encoder_widths[-1], len(CLASSES))

    def check_inputs(self, frames: torch.Tensor, flow: torch.Tensor,
                     mask: torch.Tensor | None = None) -> None:
        """ValueError naming the problem unless frames (N, T, 64, 64), flow (N, T, 2, 64, 64)
        (same N and T, T >= 2, the parameters' dtype, finite) and mask (N, 64, 64) bool."""
        dtype = self.classifier.weight.dtype
        for name, x, shape in (("frames", frames, "(N, T, 64, 64)"),
                               ("flow", flow, "(N, T, 2, 64, 64)")):
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{name}: expected a torch.Tensor {shape}, got {type(x).__name__}")
            if x.dtype != dtype:
                raise ValueError(f"{name} dtype {x.dtype}: expected {dtype}")
        if frames.dim() != 4 or tuple(frames.shape[2:]) != (ROI_PX, ROI_PX) \
                or int(frames.shape[1]) < MIN_FRAMES or int(frames.shape[0]) < 1:
            raise ValueError(f"frames shape {tuple(frames.shape)}: expected (N, T, {ROI_PX}, "
                             f"{ROI_PX}) with N >= 1 and T >= {MIN_FRAMES} frames of one beat")
        n, t = int(frames.shape[0]), int(frames.shape[1])
        if tuple(flow.shape) != (n, t, 2, ROI_PX, ROI_PX):
            raise ValueError(f"flow shape {tuple(flow.shape)}: expected (N, T, 2, {ROI_PX}, "
                             f"{ROI_PX}) = {(n, t, 2, ROI_PX, ROI_PX)}, the frames' N and T")
        for name, x in (("frames", frames), ("flow", flow)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contain NaN or infinite values")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool \
                    or tuple(mask.shape) != (n, ROI_PX, ROI_PX):
                got = (f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor)
                       else type(mask).__name__)
                raise ValueError(f"mask {got}: expected (N, {ROI_PX}, {ROI_PX}) = "
                                 f"{(n, ROI_PX, ROI_PX)} torch.bool")

    def features(self, frames: torch.Tensor, flow: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """(P, hidden + trajectory_width): the concatenated local and global feature of every
        pixel (P = N x 64 x 64 in (n, row, col) order), or of the ``mask`` pixels only."""
        t0 = self.reference_frames
        beat = _resample(frames, point_resampling(int(frames.shape[1]), t0))   # (N, T0, H, W)
        sequences = self.local_motion.embed(beat)                        # (N, H, W, T0, E)
        paths = self.global_motion.trajectories(flow)                   # (N, H, W, 27 T0)
        if mask is None:
            sequences = sequences.reshape(-1, t0, sequences.shape[-1])
            paths = paths.reshape(-1, paths.shape[-1])
        else:
            sequences, paths = sequences[mask], paths[mask]
        return torch.cat([self.local_motion(sequences), self.global_motion(paths)], 1)

    def _to_roi(self, values: torch.Tensor, mask: torch.Tensor | None, n: int,
                fill) -> torch.Tensor:
        """(P, C) pixel values -> (N, C, 64, 64), ``fill`` (C values) outside the mask."""
        c = values.shape[-1]
        if mask is None:
            return values.reshape(n, ROI_PX, ROI_PX, c).permute(0, 3, 1, 2)
        out = torch.tensor(fill, dtype=values.dtype, device=values.device)
        out = out.expand(n, ROI_PX, ROI_PX, c).clone()
        out[mask] = values
        return out.permute(0, 3, 1, 2)

    def forward_with_reconstruction(self, frames: torch.Tensor, flow: torch.Tensor,
                                    mask: torch.Tensor | None = None
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (N, 2, 64, 64), features (N, F, 64, 64), reconstruction (N, F, 64, 64)):
        F = ``feature_width``, the concatenated local and global feature the auto-encoder's
        decoder reconstructs from the code (features and reconstruction zero outside a mask)."""
        self.check_inputs(frames, flow, mask)
        n = int(frames.shape[0])
        zeros = (0.0,) * self.feature_width
        if mask is not None and not bool(mask.any()):
            empty = frames.new_zeros(0, self.feature_width)
            return (self._to_roi(frames.new_zeros(0, len(CLASSES)), mask, n, OUTSIDE_LOGITS),
                    self._to_roi(empty, mask, n, zeros), self._to_roi(empty, mask, n, zeros))
        feats = self.features(frames, flow, mask)
        code = self.auto_encoder(feats)
        logits = self.classifier(code)
        reconstruction = self.auto_encoder.decoder(code)
        return (self._to_roi(logits, mask, n, OUTSIDE_LOGITS), self._to_roi(feats, mask, n, zeros),
                self._to_roi(reconstruction, mask, n, zeros))

    def forward(self, frames: torch.Tensor, flow: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, 2, 64, 64); outside ``mask`` (if given) :data:`OUTSIDE_LOGITS`."""
        self.check_inputs(frames, flow, mask)
        n = int(frames.shape[0])
        if mask is not None and not bool(mask.any()):
            return self._to_roi(frames.new_zeros(0, len(CLASSES)), mask, n, OUTSIDE_LOGITS)
        logits = self.classifier(self.auto_encoder(self.features(frames, flow, mask)))
        return self._to_roi(logits, mask, n, OUTSIDE_LOGITS)


def infarct_probability(logits: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) logits -> (N, H, W) probability of infarct (softmax over the classes)."""
    if logits.dim() != 4 or int(logits.shape[1]) != len(CLASSES):
        raise ValueError(f"logits shape {tuple(logits.shape)}: expected (N, {len(CLASSES)}, H, W)")
    return torch.softmax(logits, dim=1)[:, CLASSES.index("infarct")]


def reconstruction_loss(features: torch.Tensor, reconstruction: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """The auto-encoder loss: mean squared error of the reconstruction against the feature
    (detached: module docstring), over the ``mask`` pixels ((N, 64, 64) bool) or all."""
    err = (reconstruction - features.detach()).square().mean(1)            # (N, H, W)
    return err[mask].mean() if mask is not None else err.mean()


def build(**overrides) -> OFRNN:
    """OF-RNN with the default sizes (:data:`DEFAULTS`, or ``overrides``) and random weights."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown size(s) {', '.join(sorted(unknown))}; the sizes are "
                         f"{', '.join(DEFAULTS)}")
    return OFRNN(**{**DEFAULTS, **overrides})
