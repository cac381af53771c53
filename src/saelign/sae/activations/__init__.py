"""SAE activations as plug-ins, one module each, registered by name in `ACTIVATIONS`. A new activation is a
module here with one `@register`ed subclass of `Activation` (or `DenseActivation`, `TopK`), imported below."""

from saelign.sae.activations.base import ACTIVATIONS, Activation, DenseActivation, activation_class, register
from saelign.sae.activations.batchtopk import BatchTopK
from saelign.sae.activations.jumprelu import JumpReLU
from saelign.sae.activations.relu import ReLU
from saelign.sae.activations.topk import TopK

__all__ = ["ACTIVATIONS", "Activation", "BatchTopK", "DenseActivation", "JumpReLU", "ReLU", "TopK",
           "activation_class", "register"]
