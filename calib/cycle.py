"""Cardiac timing of a phantom clip: frames, phases, the contraction waveform, ED/ES frames.

Phase is measured in cardiac cycles: phase 0, 1, 2, ... are end-diastole (ED), phase
``k + es_phase`` is end-systole (ES).  The contraction waveform ``c(phase)`` is 0 at ED and
1 at ES; every prescribed deformation (segment strains, wall motion, valve opening) is a
peak value times ``c``:

* systole ``0 .. es``: raised cosine 0 -> 1 (isovolumic contraction and ejection);
* early filling ``es .. es + 0.35 * diastole``: 1 -> ``diastasis_level`` (E wave);
* diastasis: slow relaxation to ``0.8 * diastasis_level``;
* atrial contraction (last ``atrial_fraction`` of the cycle): -> 0 (A wave).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calib.errors import PhantomParameterError, require_int_range, require_positive, require_range


@dataclass(frozen=True)
class CardiacCycleConfig:
    """Timing of a clip. Frame ``i`` is acquired at ``i / fps`` seconds."""

    heart_rate_bpm: float = 70.0
    fps: float = 50.0
    frames: int = 60
    start_phase: float = 0.0          # cardiac phase of frame 0 in cycles, 0 = end-diastole
    es_phase: float | None = None     # phase of end-systole in cycles; None -> from heart rate
    diastasis_level: float = 0.2      # contraction level left after early filling
    atrial_fraction: float = 0.15     # share of the cycle taken by atrial contraction

    def __post_init__(self) -> None:
        require_positive("fps", self.fps, "frames per second")
        require_range("fps", self.fps, 1e-3, 2000.0, "frames per second")
        require_range("heart_rate_bpm", self.heart_rate_bpm, 20.0, 250.0, "beats per minute")
        require_int_range("frames", self.frames, 1, 100_000)
        require_range("start_phase", self.start_phase, 0.0, 1.0, "cycles")
        if self.es_phase is not None:
            require_range("es_phase", self.es_phase, 0.15, 0.7, "cycles")
        require_range("diastasis_level", self.diastasis_level, 0.0, 0.6)
        require_range("atrial_fraction", self.atrial_fraction, 0.05, 0.3, "cycles")
        es = self.es_phase_value
        if es + 0.1 > 1.0 - self.atrial_fraction:
            raise PhantomParameterError(
                f"es_phase={es:.3f} leaves no diastole before atrial contraction "
                f"(atrial_fraction={self.atrial_fraction}); lower heart_rate_bpm or es_phase")

    # ------------------------------------------------------------------ timing
    @property
    def rr_s(self) -> float:
        """Cardiac cycle length in seconds."""
        return 60.0 / self.heart_rate_bpm

    @property
    def es_phase_value(self) -> float:
        """End-systole phase; by default from a Bazett-like law, ES at 0.40 s * sqrt(RR / 1 s)."""
        if self.es_phase is not None:
            return float(self.es_phase)
        es_s = 0.40 * math.sqrt(self.rr_s)
        return float(min(max(es_s / self.rr_s, 0.25), 0.6))

    def frame_times_s(self) -> np.ndarray:
        return np.arange(self.frames, dtype=np.float64) / self.fps

    def frame_phases(self, extra: int = 0) -> np.ndarray:
        """Unwrapped phase (cycles) of frames ``0 .. frames - 1 + extra``."""
        t = np.arange(self.frames + extra, dtype=np.float64) / self.fps
        return self.start_phase + t * self.heart_rate_bpm / 60.0

    # -------------------------------------------------------------- waveform
    def contraction(self, phase) -> np.ndarray:
        """Contraction level c in [0, 1] (0 at ED, 1 at ES) for phase(s) in cycles."""
        p = np.mod(np.asarray(phase, dtype=np.float64), 1.0)
        es = self.es_phase_value
        dia = 1.0 - es
        e_end = es + 0.35 * dia
        a_start = 1.0 - self.atrial_fraction
        d1 = self.diastasis_level
        d2 = 0.8 * d1
        out = np.empty_like(p)
        sys_ = p < es
        out[sys_] = 0.5 * (1.0 - np.cos(np.pi * p[sys_] / es))
        early = (p >= es) & (p < e_end)
        x = (p[early] - es) / (e_end - es)
        out[early] = 1.0 - (1.0 - d1) * 0.5 * (1.0 - np.cos(np.pi * x))
        dias = (p >= e_end) & (p < a_start)
        x = (p[dias] - e_end) / max(a_start - e_end, 1e-9)
        out[dias] = d1 + (d2 - d1) * x
        atr = p >= a_start
        x = (p[atr] - a_start) / self.atrial_fraction
        out[atr] = d2 * 0.5 * (1.0 + np.cos(np.pi * x))
        return out

    def valve_opening(self, phase) -> np.ndarray:
        """Mitral/tricuspid opening in [0, 1]: shut in systole, open in E and A, half in diastasis."""
        p = np.mod(np.asarray(phase, dtype=np.float64), 1.0)
        es = self.es_phase_value
        dia = 1.0 - es
        ivr = es + 0.06 * dia                      # isovolumic relaxation: still shut
        e_peak = es + 0.2 * dia
        e_end = es + 0.35 * dia
        a_start = 1.0 - self.atrial_fraction
        a_peak = a_start + 0.4 * self.atrial_fraction
        knots_x = [0.0, ivr, e_peak, e_end, a_start, a_peak, 0.97, 1.0]
        knots_y = [0.0, 0.0, 1.0, 0.45, 0.45, 0.9, 0.0, 0.0]
        return np.interp(p, knots_x, knots_y)

    def aortic_opening(self, phase) -> np.ndarray:
        """Aortic/pulmonary valve opening: open during ejection only."""
        p = np.mod(np.asarray(phase, dtype=np.float64), 1.0)
        es = self.es_phase_value
        return np.interp(p, [0.0, 0.08 * es, 0.2 * es, 0.85 * es, es, 1.0], [0, 0, 1, 1, 0, 0])

    # --------------------------------------------------------------- ED / ES
    def ed_es_frames(self) -> tuple[np.ndarray, np.ndarray]:
        """Frame indices nearest to each ED (integer phase) and ES inside the clip.

        An event counts only if a frame lies within half a frame interval of it.
        """
        ph = self.frame_phases()
        dph = self.heart_rate_bpm / 60.0 / self.fps  # phase step per frame
        out = []
        for offset in (0.0, self.es_phase_value):
            k0 = math.floor(ph[0] - offset) - 1
            k1 = math.ceil(ph[-1] - offset) + 1
            idx = []
            for k in range(k0, k1 + 1):
                target = k + offset
                i = int(round((target - ph[0]) / dph)) if dph > 0 else 0
                if 0 <= i < self.frames and abs(ph[i] - target) <= 0.5 * dph + 1e-12:
                    if not idx or idx[-1] != i:
                        idx.append(i)
            out.append(np.asarray(idx, dtype=np.int64))
        return out[0], out[1]
