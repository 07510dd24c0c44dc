"""Converters of public cardiac MRI datasets (ACDC, M&Ms, M&Ms-2, MyoPS 2020) into nnU-Net raw datasets
in one label convention (ACDC: 1 RV cavity, 2 LV myocardium, 3 LV cavity), with patient-level
5-fold splits and per-case metadata (vendor, centre, pathology, ...) in dataset.json.

The scripts ``dataset_conversion/Dataset91x_*.py`` are thin command-line wrappers of
:func:`convert_acdc`, :func:`convert_mnms`, :func:`convert_mnms2` and :func:`convert_myops`.
"""
from __future__ import annotations

from .acdc import convert_acdc
from .common import ACDC_LABELS, METADATA_KEY, ConversionError, ConversionResult, patient_level_splits
from .mnms import convert_mnms
from .mnms2 import convert_mnms2
from .myops import convert_myops

__all__ = ["ACDC_LABELS", "METADATA_KEY", "ConversionError", "ConversionResult", "convert_acdc",
           "convert_mnms", "convert_mnms2", "convert_myops", "patient_level_splits"]
