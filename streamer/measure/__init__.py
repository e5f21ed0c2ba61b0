"""Measurement stage: arrays in, arrays out (numpy, numba, cv2, scipy only).

centerline  myocardium mask -> endo/epi borders and a 120-point centreline
sampling    dense flow at sub-pixel points -> velocities in mm/s
kalman      batched numba Kalman filter (constant acceleration), PointTracker, RTS smoother
tracking    A4C centreline policy on top of kalman: CentrelineTracker, TrackerConfig
strain      GLS, regional strain, strain rate, beats; MR short-axis strain per AHA segment
sax         MR short axis from a label image: LV centre, RV insertion points, AHA segment map,
            slice levels of a stack, disk-summation volumes, mass, ejection fraction
synthetic   an analytic deforming horseshoe with exact strain (tests, demos)
labels      label maps from per-class scores (a one-pass arg-max over the classes)

Importing the package imports nothing heavy; call ``tracking.warmup()`` at start-up.
"""
