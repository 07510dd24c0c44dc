"""Tissue-map cache: raw-geometry file format, manifest, atomic writes, validation."""
from .store import (FORMAT_VERSION, MANIFEST_NAME, MAP_NAMES, TissueMapError, atomic_write_json,
                    case_is_complete, check_map_values, list_complete_cases, map_path, missing_cases,
                    read_case_maps, read_manifest, write_case_maps, write_manifest)

__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "MAP_NAMES", "TissueMapError", "atomic_write_json",
           "case_is_complete", "check_map_values", "list_complete_cases", "map_path", "missing_cases",
           "read_case_maps", "read_manifest", "write_case_maps", "write_manifest"]
