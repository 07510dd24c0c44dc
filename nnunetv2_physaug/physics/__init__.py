"""MR physics: closed-form signal equations (torch) and the reference tissue table."""
from .signal import (bssfp, gd_t1, inversion_recovery, look_locker, optimal_bssfp_flip_deg,
                     saturation_recovery, spin_echo, spoiled_gre, t2prep)
from .tissues import FIELD_STRENGTHS, TISSUES, TissueProperties, tissue, tissue_table

__all__ = ["bssfp", "spoiled_gre", "inversion_recovery", "look_locker", "saturation_recovery",
           "t2prep", "spin_echo", "gd_t1", "optimal_bssfp_flip_deg", "TissueProperties", "tissue",
           "tissue_table", "TISSUES", "FIELD_STRENGTHS"]
