"""The "MAGC" Processing provider: one algorithm class per operation."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..paths import icon_path
from .baseline import BaselineAlgorithm
from .batch import BatchEncodeAlgorithm
from .compare import CompareAlgorithm
from .decode import DecodeFileAlgorithm
from .encode import EncodeRasterAlgorithm
from .roundtrip import RoundTripAlgorithm

ALGORITHMS = (EncodeRasterAlgorithm, DecodeFileAlgorithm, RoundTripAlgorithm, BatchEncodeAlgorithm,
              BaselineAlgorithm, CompareAlgorithm)


class MagcProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "magc"

    def name(self) -> str:
        return "MAGC"

    def longName(self) -> str:  # noqa: N802
        return "MAGC map-assisted generative compression"

    def icon(self) -> QIcon:
        return QIcon(icon_path())

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())
