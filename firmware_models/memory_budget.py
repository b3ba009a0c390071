"""Memory accounting of an on-device learner, in bytes: the one formula for RAM and flash.

It lives in the lowest package so that model cards (`firmware_models.card`), devices
(`devices.learning.fit`, deploy fit checks) and the registry all report the same figures.

RAM of a device that runs the frozen int8 backbone and trains the float head with batch size 1::

    ram   = arena + head_weights + gradients + activations + buffer + adaptation + federated
    arena        = TFLite Micro tensor arena of the backbone (measured: the smallest arena with
                   which TFLM allocates and invokes it; 0 without a backbone, e.g. sine)
    head_weights = 4 * n_params(head)                              (float32)
    gradients    = 4 * (outputs of the lowest trained layer and every layer above it)
                   (float32 error vectors d_l = dL/dz_l of one sample: `MLPHead.sgd_step` applies
                   W_l -= lr * outer(a_l, d_l) in place, so no weight-sized gradient ever exists;
                   a full gradient copy would cost 4 * n_params(trainable layers) instead)
    activations  = 4 * (n_in + sum of every layer's output size)   (a_0 .. a_L of one sample;
                   kept from the forward pass for the backward pass, ReLU masks read off them)
    buffer       = buffer_samples * bytes of one raw input sample  (int8 backbone input, or
                   float32 head input without a backbone)
    adaptation   = 4 * the larger of what the few-shot adaptation procedure holds (0 when the
                   device only runs batch-1 SGD):
                   closed-form readout of the last layer (h inputs, m outputs):
                       (h + 1)^2 + (h + 1) * m   (Gram matrix, Cholesky in place; right-hand side,
                                                  `devices.learning.readout`)
                   full-batch ("batch") adaptation steps: n_params(head)  (one accumulated gradient)
    federated    = 4 * the floats a federated round keeps between rounds (0 for FedAvg/Reptile):
                   the base copy of the weights a delta-coded downlink is applied to
                   (n_params(head)), plus the error-feedback residual of a Top-P uplink
                   (n_params(shared layers))

Flash::

    flash = size of backbone.tflite + 4 * n_params(head)

What is left out, on purpose: the code itself (interpreter kernels, the learner loop: firmware, not
model) and scalars (loss, learning rate, loop counters).
The error vectors are counted separately from the activations because both are alive at once.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_BYTES = 4


@dataclass(frozen=True)
class MemoryReport:
    """RAM parts and flash parts of one learner, in bytes."""

    arena: int
    head_weights: int
    gradients: int
    activations: int
    buffer: int
    flash_backbone: int
    flash_head: int
    adaptation: int = 0
    federated: int = 0

    @property
    def ram(self) -> int:
        """Total RAM: arena + head weights + gradients + activations + buffer + adaptation + federated."""
        return (self.arena + self.head_weights + self.gradients + self.activations + self.buffer
                + self.adaptation + self.federated)

    @property
    def flash(self) -> int:
        """Total flash: backbone .tflite bytes + float32 head parameters."""
        return self.flash_backbone + self.flash_head

    def as_dict(self) -> dict[str, int]:
        """RAM parts (arena … federated), ``total`` RAM, ``flash`` and its parts."""
        return {"arena": self.arena, "head_weights": self.head_weights, "gradients": self.gradients,
                "activations": self.activations, "buffer": self.buffer, "adaptation": self.adaptation,
                "federated": self.federated, "total": self.ram,
                "flash": self.flash, "flash_backbone": self.flash_backbone, "flash_head": self.flash_head}


def adaptation_floats(layer_sizes: list[int], *, readout: bool, batch_steps: bool) -> int:
    """Floats of the adaptation state (see the module docstring): readout solver or accumulated gradient."""
    h, m = int(layer_sizes[-2]), int(layer_sizes[-1])
    n_params = sum(a * b + b for a, b in zip(layer_sizes[:-1], layer_sizes[1:], strict=True))
    return max((h + 1) ** 2 + (h + 1) * m if readout else 0, n_params if batch_steps else 0)


def account(*, layer_sizes: list[int], gradient_floats: int, arena: int, backbone_bytes: int,
            sample_bytes: int, buffer_samples: int = 1, adaptation_floats: int = 0,
            federated_floats: int = 0) -> MemoryReport:
    """Apply the formulas of this module to one head/backbone pair (see the module docstring)."""
    if buffer_samples < 0:
        raise ValueError(f"buffer_samples must be >= 0; got {buffer_samples}")
    n_params = sum(a * b + b for a, b in zip(layer_sizes[:-1], layer_sizes[1:], strict=True))
    head = FLOAT_BYTES * n_params
    return MemoryReport(
        arena=int(arena),
        head_weights=head,
        gradients=FLOAT_BYTES * int(gradient_floats),
        activations=FLOAT_BYTES * int(sum(layer_sizes)),
        buffer=int(buffer_samples) * int(sample_bytes),
        flash_backbone=int(backbone_bytes),
        flash_head=head,
        adaptation=FLOAT_BYTES * int(adaptation_floats),
        federated=FLOAT_BYTES * int(federated_floats),
    )
