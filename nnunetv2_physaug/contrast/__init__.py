"""Contrast protocols (sequence families, parameter ranges, presets) and the renderer.

Public API::

    from nnunetv2_physaug.contrast import load_protocol, Protocol, ProtocolError, ContrastRenderer, PRESETS
    renderer = ContrastRenderer(load_protocol("wide"))        # or "paper" or a .yaml/.yml/.json path
    image, params = renderer.render(m0, t1, t2, rng, labels=None, valid=None)
"""
from .families import FAMILIES, Family, ParamSpec
from .imperfections import IMPERFECTIONS, add_rician_noise, smooth_field
from .protocol import (PRESETS, FamilySpec, ImperfectionSpec, LabelSpec, PostprocessSpec, Protocol, ProtocolError,
                       load_protocol, protocol_from_dict, protocol_with_settings, save_protocol)
from .renderer import ContrastRenderer, RenderContext

__all__ = ["load_protocol", "protocol_with_settings", "save_protocol", "protocol_from_dict", "Protocol",
           "ProtocolError", "PRESETS",
           "FamilySpec", "ImperfectionSpec", "LabelSpec", "PostprocessSpec", "ContrastRenderer",
           "RenderContext", "FAMILIES", "Family", "ParamSpec", "IMPERFECTIONS", "smooth_field",
           "add_rician_noise"]
