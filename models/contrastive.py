"""L_clip: softmax InfoNCE in both directions with a learned temperature (not sigmoid).

Across workers each rank scores its own rows against the global batch, gathered with gradient, so
the loss equals the single-process loss on the concatenated batch.
"""

import torch
import torch.nn.functional as F

from .distributed import gather_with_grad, world


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    image = F.normalize(image_emb.float(), dim=-1)
    text = F.normalize(text_emb.float(), dim=-1)
    all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    rank, _ = world()
    labels = torch.arange(image.shape[0], device=image.device) + rank * image.shape[0]
    logits_i2t = image @ all_text.T / temperature
    logits_t2i = text @ all_image.T / temperature
    return 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))
