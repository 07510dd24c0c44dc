"""Tissue maps: the per-case file format (:mod:`.store`), the folder that owns manifest, commit records,
locks and completeness (:mod:`.folder`), and alignment to nnU-Net's preprocessed geometry (:mod:`.align`)."""
from .folder import (FORMAT_VERSION, MANIFEST_NAME, CacheMismatchError, TissueMapFolder, identity_hash,
                     read_manifest)
from .store import MAP_NAMES, TissueMapError, check_map_values, map_path, read_case_maps, write_case_maps

__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "MAP_NAMES", "CacheMismatchError", "TissueMapError",
           "TissueMapFolder", "check_map_values", "identity_hash", "map_path", "read_case_maps", "read_manifest",
           "write_case_maps"]
