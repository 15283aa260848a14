"""PPO critics: a value head on the policy's own backbone, or a separate critic model.

Both read the last hidden state h_t and return V_t = w·h_t + b for every position; position t values
the state "prompt + tokens ≤ t", i.e. it is aligned with the logits that predict token t + 1.

    model = PolicyWithValueHead(causal_lm)          # PPOConfig.critic = "value_head"
    logits, values = model(input_ids, attention_mask)
    critic = SeparateCritic.from_pretrained(path)   # PPOConfig.critic = "separate"
    values = critic(input_ids, attention_mask)

The value head is saved beside the HF weights as `value_head/model.safetensors`; the policy's own
`state_dict` names stay HF names (`lm.` stripped by `policy_state_dict`) so weight sync and
`save_pretrained` see a plain causal LM.
"""

from __future__ import annotations

import os

import torch
from torch import nn

# In a subdirectory: vLLM loads every *.safetensors beside config.json and rejects unknown tensors.
VALUE_HEAD_FILE = os.path.join("value_head", "model.safetensors")


class ValueHead(nn.Module):
    """V = w·h + b, zero-initialised so the first returns are fitted from V = 0 instead of noise."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1).float()

    def save(self, directory: str) -> None:
        from safetensors.torch import save_file

        path = os.path.join(directory, VALUE_HEAD_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, path)

    def load(self, directory: str) -> bool:
        """Load a saved head if `directory` has one; returns whether it did."""
        path = os.path.join(directory, VALUE_HEAD_FILE)
        if not os.path.exists(path):
            return False
        from safetensors.torch import load_file

        self.load_state_dict(load_file(path))
        return True


def _hidden_size(model) -> int:
    config = model.config
    return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size


class PolicyWithValueHead(nn.Module):
    """A causal LM plus a value head sharing its backbone: one forward gives logits and values."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm, self.value_head, self.config = lm, ValueHead(_hidden_size(lm)), lm.config

    def forward(self, input_ids, attention_mask=None):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.logits, self.value_head(out.hidden_states[-1])

    def policy_state_dict(self) -> dict:
        """The causal LM's own state (HF names) for sync and save_pretrained."""
        return self.lm.state_dict()


class SeparateCritic(nn.Module):
    """A backbone of its own (`AutoModel`, no LM head) plus a value head: trained by its own learner."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone, self.value_head, self.config = backbone, ValueHead(_hidden_size(backbone)), backbone.config

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype = torch.float32) -> SeparateCritic:
        from transformers import AutoModel

        critic = cls(AutoModel.from_pretrained(path, dtype=dtype))
        critic.value_head.load(path)
        return critic

    def forward(self, input_ids, attention_mask=None):
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return self.value_head(out.last_hidden_state)

    def save_pretrained(self, directory: str, state_dict: dict | None = None, safe_serialization: bool = True) -> None:
        """Backbone as an HF model + the head; `state_dict` (this module's names, e.g. gathered by a
        learner) overrides the live weights."""
        backbone = None
        if state_dict is not None:
            backbone = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
            self.value_head.load_state_dict({k.removeprefix("value_head."): v for k, v in state_dict.items()
                                             if k.startswith("value_head.")})
        self.backbone.save_pretrained(directory, state_dict=backbone, safe_serialization=safe_serialization)
        self.value_head.save(directory)
