"""The model-layer registries: backbones (``model_conf``), poolings (``pooling_conf``) and heads (``loss_conf``).

Each backbone, pooling and head module registers its classes here with a decorator; ``mvector.models`` imports
every built-in module so the registries are full once it is imported.

>>> from mvector.models import BACKBONES
>>> "EcapaTdnn" in BACKBONES and "ecapa_tdnn" in BACKBONES
True
"""

from mvector.registry import Registry

__all__ = ["BACKBONES", "POOLINGS", "HEADS"]

#: Backbones: ``features [B, frames, input_size]`` (+ frame counts) -> ``embeddings [B, embd_dim]``.
BACKBONES = Registry("backbone", section="model_conf", fixed=("input_size",))
#: Length-masked pooling layers; ``output_size`` tells the size they produce.
POOLINGS = Registry("pooling_type", section="pooling_conf", fixed=("in_channels",))
#: Classifier heads + losses for training.
HEADS = Registry("loss", section="loss_conf", fixed=("embd_dim", "num_speakers"))
