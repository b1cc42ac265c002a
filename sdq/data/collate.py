"""Dynamic padding: pad each batch to its longest sequence (optionally to a multiple of 8).

>>> batch = Collator(pad_id=1, token_task=False)([{"input_ids": [0, 5, 2], "labels": 1, "group": -1}])
>>> batch["input_ids"].shape, batch["attention_mask"].tolist()   # (1, 3), [[1, 1, 1]]
"""

from __future__ import annotations

import torch

IGNORE = -100


class Collator:
    """Turns pre-tokenized features into a padded batch dict of long tensors."""

    def __init__(self, pad_id: int, token_task: bool, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id, self.token_task, self.multiple = pad_id, token_task, pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        b = len(features)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((b, width), dtype=torch.long)  # (B, T)
        types = torch.zeros((b, width), dtype=torch.long) if "token_type_ids" in features[0] else None
        labels = torch.full((b, width), IGNORE, dtype=torch.long) if self.token_task else \
            torch.tensor([f["labels"] for f in features], dtype=torch.long)  # (B, T) or (B,)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            if types is not None:
                types[i, :n] = torch.tensor(f["token_type_ids"], dtype=torch.long)
            if self.token_task:
                labels[i, :n] = torch.tensor(f["labels"], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                 "group": torch.tensor([f.get("group", -1) for f in features], dtype=torch.long)}  # (B,)
        if types is not None:
            batch["token_type_ids"] = types
        return batch
