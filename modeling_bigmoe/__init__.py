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

from .configuration_lasoftmoe import LaSoftMoeConfig  # noqa: E402
from .configuration_mmda import MmdaConfig  # noqa: E402
from .modeling_lasoftmoe import (  # noqa: E402
    LaSoftMoeFaceAntiSpoofingOutput,
    LaSoftMoeForFaceAntiSpoofing,
    register_lasoftmoe_for_remote_code,
)
from .modeling_mmda import (  # noqa: E402
    MmdaFaceAntiSpoofingOutput,
    MmdaForFaceAntiSpoofing,
    MmdaPreTrainedModel,
    register_mmda_for_remote_code,
)

for _config, _model, _type in ((MmdaConfig, MmdaForFaceAntiSpoofing, "mmda"),
                               (LaSoftMoeConfig, LaSoftMoeForFaceAntiSpoofing, "la_softmoe")):
    AutoConfig.register(_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForImageClassification.register(_config, _model, exist_ok=True)

from .image_processing_bigmoe import BigMoeImageProcessor  # noqa: E402
from .pipeline_fas import FaceAntiSpoofingPipeline, register_pipeline  # noqa: E402

# "face-anti-spoofing" pipeline + AutoImageProcessor for BIG-MoE
register_pipeline()

# Training-side names load lazily (datasets, scikit-learn, matplotlib are not needed for inference).
_LAZY = {
    "load_synthetic_benchmark": "synthetic", "generate_domain": "synthetic", "DomainProfile": "synthetic",
    "DOMAIN_PROFILES": "synthetic", "write_contact_sheet": "synthetic",
    "load_mmdg_benchmark": "data", "validate_files": "data", "FasCollator": "data",
    "FasAugmentation": "augmentation",
    "compute_fas_metrics": "metrics", "select_threshold": "metrics", "format_results_table": "metrics",
    "summarize_rows": "metrics", "roc_det_plot": "metrics",
    "Fold": "protocols", "build_fold": "protocols", "parse_fold": "protocols", "protocol1_folds": "protocols",
    "protocol2_folds": "protocols", "protocol2_settings": "protocols", "protocol3_folds": "protocols",
    "protocol_folds": "protocols",
    "FasTrainer": "training", "FasMetrics": "training", "fas_training_arguments": "training",
    "run_fold": "training",
    "run_protocol": "runner", "model_spec": "runner",
    "push_run": "hub", "load_checkpoint": "hub", "load_adapter_checkpoint": "hub",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "BigMoeBlockAdapter",
    "BigMoeConfig",
    "BigMoeFaceAntiSpoofingOutput",
    "BigMoeForFaceAntiSpoofing",
    "BigMoeImageProcessor",
    "FaceAntiSpoofingPipeline",
    "LaSoftMoeConfig",
    "LaSoftMoeFaceAntiSpoofingOutput",
    "LaSoftMoeForFaceAntiSpoofing",
    "MmdaConfig",
    "MmdaFaceAntiSpoofingOutput",
    "MmdaForFaceAntiSpoofing",
    "MmdaPreTrainedModel",
    "register_lasoftmoe_for_remote_code",
    "register_mmda_for_remote_code",
    "register_pipeline",
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
    *_LAZY,
]
