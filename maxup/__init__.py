"""maxup: MaxUp training (Gong et al. 2020) with Ray-distributed sweeps and the paper's tables.

Public names are imported lazily so that light commands (``maxup tables``) never pay for
torch or Ray::

    from maxup import MaxUpLoss, build_augmentation, build_model, build_dataset, train
"""

__version__ = "0.1.0"

_EXPORTS = {
    "MaxUpLoss": "maxup.objective",
    "MaxUpOutput": "maxup.objective",
    "soft_cross_entropy": "maxup.objective",
    "build_augmentation": "maxup.augment",
    "GaussianNoise": "maxup.augment",
    "Cutout": "maxup.augment",
    "CropFlip": "maxup.augment",
    "CutMix": "maxup.augment",
    "MixUp": "maxup.augment",
    "Compose": "maxup.augment",
    "RunConfig": "maxup.config",
    "load_config": "maxup.config",
    "build_model": "maxup.models",
    "list_models": "maxup.models",
    "build_dataset": "maxup.data",
    "dataset_info": "maxup.data",
    "list_datasets": "maxup.data",
    "train": "maxup.engine",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'maxup' has no attribute {name!r}")
