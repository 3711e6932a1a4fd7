"""Pretrained models: a catalogue of known checkpoints, their import into mvector model folders, and lookup.

>>> from mvector.pretrained import model_names
>>> model_names()
['campplus_zh_en', 'segmentation_3_0', 'silero_vad']
"""

from mvector.pretrained.catalogue import CATALOGUE_PATH, catalogue_entry, load_catalogue, model_names
from mvector.pretrained.importer import ImportReport, check_state_dict, import_checkpoint, read_state_dict

__all__ = [
    "CATALOGUE_PATH",
    "catalogue_entry",
    "load_catalogue",
    "model_names",
    "ImportReport",
    "check_state_dict",
    "import_checkpoint",
    "read_state_dict",
]
