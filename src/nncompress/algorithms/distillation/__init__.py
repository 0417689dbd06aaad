"""NNCF 2.x ``knowledge_distillation``: builder, controller, loss, frozen teacher."""

from .algo import KnowledgeDistillationBuilder, KnowledgeDistillationController
from .loss import DistillationParams, KnowledgeDistillationLoss

__all__ = [
    "DistillationParams",
    "KnowledgeDistillationBuilder",
    "KnowledgeDistillationController",
    "KnowledgeDistillationLoss",
]
