"""Merged weights of a LoRA (peft) model for syncing to rollout engines, without touching the live model.

`merged_state_dict(model)` returns HF parameter names (no `base_model.model.` / `.base_layer` /
`modules_to_save` wrappers, no adapter tensors) mapped to tensors. Adapted Linear weights are
W + scale * B @ A computed in fp32 on a copy, then cast to W's dtype; the adapters stay unmerged and
trainable. Entries without an adapter are detached views of the live parameters: read them, do not
modify them. A plain (non-peft) model gives its own state dict.
"""

from __future__ import annotations


def merged_state_dict(model) -> dict:
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if getattr(module, "lora_magnitude_vector", None):
            raise NotImplementedError(f"{name}: DoRA adapters are not supported by merged_state_dict")
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            a, b = module.lora_A[adapter], module.lora_B[adapter]
            if not isinstance(a, torch.nn.Linear):
                raise NotImplementedError(f"{name}: only Linear LoRA layers can be merged, got {type(a).__name__}")
            delta = (b.weight.detach().float() @ a.weight.detach().float()) * module.scaling[adapter]
            if getattr(module, "fan_in_fan_out", False):
                delta = delta.T
            key = f"{name}.weight"
            deltas[key] = deltas[key] + delta if key in deltas else delta

    out: dict[str, torch.Tensor] = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key or ".original_module." in key:
            continue
        clean = key.replace(".base_layer.", ".")
        if ".modules_to_save." in clean:  # fully-trained copies replace the frozen originals
            head, _, tail = clean.partition(".modules_to_save.")
            clean = f"{head}.{tail.split('.', 1)[1]}"
        tensor = tensor.detach()
        if clean in deltas:
            tensor = (tensor.float() + deltas.pop(clean)).to(tensor.dtype)
        out[clean] = tensor
    if deltas:
        raise RuntimeError(f"LoRA deltas without a base weight: {sorted(deltas)[:5]}")
    return out
