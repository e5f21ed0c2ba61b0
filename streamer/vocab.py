"""The domain vocabulary: view classes, label classes, segment names, wall-motion classes.

One home for the names and codes that the networks, the phantoms, the measurements and
the wire protocol must agree on.  It sits at the bottom of the import graph: it imports
nothing from the project, and every package (``streamer``, ``engines``, ``calib``, the
benchmarks and tests) may import it.  Orders are contracts: a network's logits, a truth
file's integer codes and a result's field order follow these tuples, so never reorder
them (append, and retrain, instead).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["A4C_SEGMENTS", "AHA_NAMES", "AHA_SEGMENTS", "MR_LABELS", "MRLabel", "SAX_LEVELS",
           "SEG_CLASSES", "VIEW_CLASSES", "WALL_MOTION_CLASSES", "WALL_MOTION_SCORES"]

# ---------------------------------------------------------------- echo views

#: echo view classes, in the order of the view classifier's logits (and of the phantoms'
#: ``view_index``): apical 4-, 2-chamber and long axis, parasternal long and short axis,
#: subcostal 4-chamber, subcostal inferior vena cava, and anything else
VIEW_CLASSES = ("a4c", "a2c", "alax", "plax", "psax", "sc4c", "ivc", "unknown")

# ---------------------------------------------------------------- segmentation

#: the echo segmenter's classes, in the order of its logit channels (LV myocardium, LV cavity)
SEG_CLASSES = ("background", "myocardium", "cavity")


class MRLabel(IntEnum):
    """Values of an MR short-axis label image (one integer per pixel)."""

    BACKGROUND = 0
    LV_CAVITY = 1
    LV_MYOCARDIUM = 2
    RV_CAVITY = 3


#: MR label name -> value (``MRLabel`` as a plain mapping)
MR_LABELS = {label.name.lower(): int(label) for label in MRLabel}

# ---------------------------------------------------------------- segments

#: the six regional segments of the apical 4-chamber view, in centreline order: basal
#: septum -> apex -> basal lateral wall (regional strain follows this order)
A4C_SEGMENTS = ("basal_septal", "mid_septal", "apical_septal",
                "apical_lateral", "mid_lateral", "basal_lateral")

#: AHA 16-segment model: the segment numbers of each short-axis slice level, in AHA order
AHA_SEGMENTS = {"basal": (1, 2, 3, 4, 5, 6), "mid": (7, 8, 9, 10, 11, 12),
                "apical": (13, 14, 15, 16)}
#: short-axis slice levels, base to apex
SAX_LEVELS = tuple(AHA_SEGMENTS)
#: AHA segment number -> name
AHA_NAMES = {
    1: "basal anterior", 2: "basal anteroseptal", 3: "basal inferoseptal", 4: "basal inferior",
    5: "basal inferolateral", 6: "basal anterolateral", 7: "mid anterior",
    8: "mid anteroseptal", 9: "mid inferoseptal", 10: "mid inferior", 11: "mid inferolateral",
    12: "mid anterolateral", 13: "apical anterior", 14: "apical septal", 15: "apical inferior",
    16: "apical lateral",
}

# ---------------------------------------------------------------- wall motion

#: wall-motion classes; a segment's class *code* (the phantoms' ``segment_scores``, the
#: MR phantom's ``wall_motion`` values) is the index in this tuple: 0 normal .. 3 dyskinetic
WALL_MOTION_CLASSES = ("normal", "hypokinetic", "akinetic", "dyskinetic")
#: the clinical wall-motion score of each class (= code + 1); the motion score index of
#: a slice or a heart is the mean score of its segments (1 normal .. 4 dyskinetic)
WALL_MOTION_SCORES = {name: code + 1 for code, name in enumerate(WALL_MOTION_CLASSES)}
