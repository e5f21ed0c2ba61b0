"""The runtime-only app (``--app none``): no analysis, for transport and latency checks of
the side-car itself. Every frame is preprocessed (so bad pixels are still refused) and
answered with the flag ``analysis_off`` and no fields."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamer.app import App, Stage
from streamer.apps.common import Preprocess


class AnalysisOff(Stage):
    """No analysis: flags the frame ``analysis_off``."""

    name = "analysis_off"
    inputs = ("image",)

    def process(self, image: np.ndarray) -> dict[str, Any]:
        return {"flags": ["analysis_off"]}


class NoAnalysisApp(App):
    """Preprocessing only; any modality, when named (``--app none``)."""

    name = "none"
    gate = "no frame is analysed"

    def stages(self) -> list[Stage]:
        return [Preprocess(), AnalysisOff()]
