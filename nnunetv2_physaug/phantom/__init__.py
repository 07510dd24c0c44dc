"""Synthetic short-axis cardiac phantoms with ground-truth M0/T1/T2 maps and ACDC labels, rendered in
several imaging domains and written as nnU-Net v2 raw datasets (``physaug-phantom``).

Modules: ``anatomy`` (shapes, tissue maps, labels; parameters in ``anatomy.yaml``), ``domains``
(sequences and scanner effects; data in ``domains.yaml``), ``writer`` (nnU-Net datasets).
"""
from .anatomy import ACDC_LABELS, CLASS_INDEX, TISSUE_CLASSES, PhantomCase, TissueClass, load_anatomy_config, make_case
from .domains import Domain, load_domains, render_domain
from .params import PhantomConfigError
from .writer import (GROUND_TRUTH_MAPS, SUMMARY_NAME, case_affine, format_summary, write_ground_truth_maps,
                     write_phantom_datasets)

__all__ = ["GROUND_TRUTH_MAPS", "make_case", "PhantomCase", "write_phantom_datasets", "load_domains", "render_domain", "Domain",
           "format_summary", "case_affine", "load_anatomy_config", "TISSUE_CLASSES", "TissueClass", "CLASS_INDEX",
           "ACDC_LABELS", "PhantomConfigError", "SUMMARY_NAME", "write_ground_truth_maps"]
