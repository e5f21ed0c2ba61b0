"""The networks, one file each, named after their part of the method.

=====  ===========================  ============================================
role   module                       network
=====  ===========================  ============================================
view   ``engines.nets.view_classifier``  view classifier (8 classes)
seg    ``engines.nets.segmenter``        LV myocardium / cavity segmenter (U-Net family)
flow   ``engines.nets.flownet``          dense motion between consecutive frames
mr     ``engines.nets.mr_joint``         short-axis MR: joint segmentation and motion
=====  ===========================  ============================================

The role -> module table is the role registry's (:data:`engines.spec.REGISTRY`).
Every module of a role defines ``SPEC`` (:class:`engines.spec.NetSpec`) and ``build()``,
which returns the network with its default hyperparameters and random weights.
Two networks run per beat, not per frame, and are not roles: ``engines.nets.cardiac_mos``
(wall-motion scores of the 16 AHA segments of a short-axis stack, issue 16; run by
:mod:`engines.wall_motion`, trained by ``engines.train.wall_motion``) and
``engines.nets.of_rnn`` (pixel-level infarct from motion, OF-RNN, issue 16; ``build()`` only:
its training and the app's stage come later). Shipped
weights (state dicts) live in ``engines/weights/`` with a JSON file beside each that
records the training command, the data seeds and the held-out metrics.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from engines.spec import REGISTRY, NetSpec, get_role

#: role -> network module (from the role registry, :data:`engines.spec.REGISTRY`)
MODULES = {name: role.network for name, role in REGISTRY.items()}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def net_module(role: str) -> ModuleType:
    return importlib.import_module(get_role(role).network)


def spec(role: str) -> NetSpec:
    return net_module(role).SPEC


def build(role: str):
    """The role's network with default hyperparameters and random weights (eval mode)."""
    return net_module(role).build().eval()


def shipped_weights(role: str) -> Path:
    return WEIGHTS_DIR / spec(role).weights_file
