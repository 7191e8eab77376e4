"""Model registry (timm style): ``build_model(name, ...)`` with a ``Normalize`` first layer.

Registered: CIFAR ``resnet20/32/56/110``, ``preact_resnet110``, ``wrn28_10``
(:mod:`maxup.models.cifar`); torchvision ``resnet50``, ``resnet101``,
``efficientnet_b0``..``b7`` (:mod:`maxup.models.imagenet`); ``small_cnn`` and ``mlp``
(:mod:`maxup.models.small`); the language model ``awd_lstm`` (:mod:`maxup.models.awd_lstm`,
built by the LM task from the ``lm`` section, not by ``build_model``).
"""

from maxup.models import awd_lstm, cifar, imagenet, small  # noqa: F401  (registers the models)
from maxup.models.normalize import Normalize
from maxup.models.registry import build_model, list_models, load_weights, register_model

__all__ = ["Normalize", "build_model", "list_models", "load_weights", "register_model"]
