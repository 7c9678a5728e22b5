"""modeling_bigmoe: generalisable multimodal face anti-spoofing as transformers models.

Importing the package registers BIG-MoE with the transformers auto classes:
``AutoConfig`` ("bigmoe"), ``AutoModel`` -> :class:`BigMoeModel` and
``AutoModelForImageClassification`` -> :class:`BigMoeForFaceAntiSpoofing` (RGB-only input works
there: the missing modalities are filled and coded).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .adapters import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    BigMoeBlockAdapter,
    BigMoeRouting,
    bigmoe_adapter_state_dict,
    inject_bigmoe_adapters,
    load_bigmoe_adapters,
    save_bigmoe_adapters,
)
from .clip_utils import get_clip_encoder_layers
from .configuration_bigmoe import BigMoeConfig
from .modeling_bigmoe import (
    INTERNAL_MODALITIES,
    PUBLIC_MODALITIES,
    PUBLIC_TO_INTERNAL,
    BigMoeFaceAntiSpoofingOutput,
    BigMoeForFaceAntiSpoofing,
    BigMoeModel,
    BigMoeModelOutput,
    BigMoePreTrainedModel,
    register_bigmoe_for_remote_code,
)

__version__ = "0.1.0"

AutoConfig.register("bigmoe", BigMoeConfig, exist_ok=True)
AutoModel.register(BigMoeConfig, BigMoeModel, exist_ok=True)
AutoModelForImageClassification.register(BigMoeConfig, BigMoeForFaceAntiSpoofing, exist_ok=True)

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "BigMoeBlockAdapter",
    "BigMoeConfig",
    "BigMoeFaceAntiSpoofingOutput",
    "BigMoeForFaceAntiSpoofing",
    "BigMoeModel",
    "BigMoeModelOutput",
    "BigMoePreTrainedModel",
    "BigMoeRouting",
    "INTERNAL_MODALITIES",
    "PUBLIC_MODALITIES",
    "PUBLIC_TO_INTERNAL",
    "bigmoe_adapter_state_dict",
    "get_clip_encoder_layers",
    "inject_bigmoe_adapters",
    "load_bigmoe_adapters",
    "register_bigmoe_for_remote_code",
    "save_bigmoe_adapters",
    "__version__",
]
