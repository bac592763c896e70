"""Parameters shared by the MAGC algorithms: declared once here, read back once here.

Enums use static strings (``PRESET=lite``, ``DEVICE=cuda:1``) so that qgis_process
commands and models stay valid when the list of presets or GPUs changes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .. import settings

MAPS, MAP_CLASSES = "MAPS", "MAP_CLASSES"
PRESET, RATE, BPP, DEVICE = "PRESET", "RATE", "BPP", "DEVICE"
WEIGHTS, SD_WEIGHTS, ALLOW_UNTRAINED, EMBED_MAP = "WEIGHTS", "SD_WEIGHTS", "ALLOW_UNTRAINED", "EMBED_MAP"
DEFAULT_PRESET = "lite"


def preset_names() -> list[str]:
    """Presets of the installed library (only ``lite`` when it cannot be imported)."""
    try:
        from magc.config import available_presets

        names = available_presets()
    except Exception:  # magc missing or broken: the dependency check explains it
        names = []
    return names or [DEFAULT_PRESET]


def cuda_count() -> int:
    """GPUs torch sees when it is loaded; else the count remembered last time; else (first
    start, e.g. qgis_process) what ``nvidia-smi -L`` lists. Never imports torch."""
    torch = sys.modules.get("torch")
    count = None
    if torch is not None:
        try:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:  # a broken CUDA install must not break the toolbox
            count = None
    remembered = settings.cuda_count()
    if count is None:
        count = remembered if remembered is not None else _nvidia_smi_count()
    if count != remembered:
        settings.set_cuda_count(count)
    return count


def _nvidia_smi_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    tool = shutil.which("nvidia-smi")
    if not tool:
        return 0
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def device_names() -> list[str]:
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(cuda_count())]


def _advanced(parameter: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def add_map_parameters(alg: QgsProcessingAlgorithm) -> None:
    alg.addParameter(QgsProcessingParameterMultipleLayers(
        MAPS, "Map layers (buildings, roads, water, vegetation)", QgsProcessing.TypeVectorAnyGeometry, optional=True))
    param = QgsProcessingParameterString(
        MAP_CLASSES, "Class assignment per map layer, ';'-separated (class=building | field=NAME | auto)",
        defaultValue="", optional=True)
    param.setHelp("One entry per map layer in order, or one entry for all. 'auto' (or empty) detects a 'class' field "
                  "or OpenStreetMap tag fields (building, highway, natural, landuse, fclass...).")
    alg.addParameter(param)


def add_model_parameters(alg: QgsProcessingAlgorithm, with_preset: bool = True) -> None:
    if with_preset:
        names = preset_names()
        default = DEFAULT_PRESET if DEFAULT_PRESET in names else names[0]
        alg.addParameter(QgsProcessingParameterEnum(PRESET, "Model (preset)", options=names, defaultValue=default,
                                                    usesStaticStrings=True))
        alg.addParameter(QgsProcessingParameterNumber(
            RATE, "Rate index (empty: the preset's default; 0 is the lowest bitrate)",
            QgsProcessingParameterNumber.Integer, optional=True, minValue=0))
        alg.addParameter(QgsProcessingParameterNumber(
            BPP, "Target bits per pixel (instead of a rate)", QgsProcessingParameterNumber.Double,
            optional=True, minValue=0.0))
    devices = device_names()
    default_device = settings.default_device()
    alg.addParameter(QgsProcessingParameterEnum(DEVICE, "Device", options=devices, usesStaticStrings=True,
                                                defaultValue=default_device if default_device in devices else "auto"))
    alg.addParameter(_advanced(QgsProcessingParameterFile(
        WEIGHTS, "MAGC weights file (empty: the embedded, downloaded or Settings weights)", QgsProcessingParameterFile.File,
        optional=True, fileFilter="Weights (*.safetensors)")))
    alg.addParameter(_advanced(QgsProcessingParameterFile(
        SD_WEIGHTS, "Stable Diffusion 2.1-base folder (for *-sd21 models)", QgsProcessingParameterFile.Folder,
        optional=True)))
    if with_preset:
        alg.addParameter(_advanced(QgsProcessingParameterBoolean(
            ALLOW_UNTRAINED, "Allow untrained weights (testing only: the output is noise)", defaultValue=False)))


def optional_number(alg: QgsProcessingAlgorithm, parameters: dict, name: str, context: QgsProcessingContext,
                    integer: bool = False) -> float | int | None:
    """None when the optional number was left empty (parameterAsInt would say 0)."""
    value = parameters.get(name)
    if value is None or value == "" or (hasattr(value, "isNull") and value.isNull()):
        return None
    return alg.parameterAsInt(parameters, name, context) if integer else alg.parameterAsDouble(parameters, name, context)


def enum_string(alg: QgsProcessingAlgorithm, parameters: dict, name: str, context: QgsProcessingContext) -> str:
    return alg.parameterAsEnumString(parameters, name, context)


def model_options(alg: QgsProcessingAlgorithm, parameters: dict, context: QgsProcessingContext) -> dict:
    """``weights`` / ``sd_weights`` / ``device`` for the library; empty fields fall back to Settings."""
    weights = alg.parameterAsFile(parameters, WEIGHTS, context) or _existing(settings.weights_folder())
    sd_weights = alg.parameterAsFile(parameters, SD_WEIGHTS, context) or _existing(settings.sd_folder())
    return {"weights": weights, "sd_weights": sd_weights, "device": enum_string(alg, parameters, DEVICE, context) or "auto"}


def _existing(path: str) -> str | None:
    """A folder from Settings, if it still exists (a stale one must not break every run)."""
    return path if path and os.path.exists(path) else None


def encode_options(alg: QgsProcessingAlgorithm, parameters: dict, context: QgsProcessingContext) -> dict:
    """Everything ``magc.api.encode_raster`` takes besides input, output, maps and callbacks."""
    options = model_options(alg, parameters, context)
    options.update(
        preset=enum_string(alg, parameters, PRESET, context) or DEFAULT_PRESET,
        rate=optional_number(alg, parameters, RATE, context, integer=True),
        bpp=optional_number(alg, parameters, BPP, context),
        allow_untrained=alg.parameterAsBool(parameters, ALLOW_UNTRAINED, context),
    )
    if EMBED_MAP in parameters:
        options["embed_map"] = alg.parameterAsBool(parameters, EMBED_MAP, context)
    return options
