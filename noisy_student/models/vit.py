"""Vision Transformers, with DeiT's distillation token (Touvron et al. 2021); sizes for a CPU.

Patches (a conv of kernel = stride = ``patch_size``) -> tokens ``[cls, (dist,) patch_1 ...]`` +
learned position embeddings (resized bicubically when the image gives another grid) -> ``depth``
pre-norm blocks (multi-head self-attention, MLP; stochastic depth linear up to the last block) ->
LayerNorm -> dropout -> ``head`` on the class token (and ``head_dist`` on the distillation token).

With ``distilled=True`` the model returns ``(class_logits, dist_logits)`` in training mode, so the
class head learns from the labels and the distillation head from the teacher
(`losses.StudentLoss`), and their mean in eval mode (DeiT's late fusion at inference).

Variants (params at 10 classes, 3 channels): vit_tiny (dim 96, depth 4, 3 heads, 0.31M);
deit_tiny_distilled (the same with a distillation token and head).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .layers import DropPath, drop_path_rates


class Block(nn.Module):
    """x + DropPath(Attention(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D]
        y = self.norm1(x)
        x = x + self.drop_path(self.attn(y, y, y, need_weights=False)[0])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int, in_chans: int = 3, img_size: int = 32,
                 patch_size: int = 4, embed_dim: int = 96, depth: int = 4, num_heads: int = 3,
                 mlp_ratio: float = 2.0, distilled: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.patch_size, self.distilled = patch_size, distilled
        self.num_tokens = 2 if distilled else 1
        self.num_features = embed_dim
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        grid = max(1, img_size // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + grid * grid, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, p)
                                      for p in drop_path_rates(depth, drop_path_rate)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self.head_dist = nn.Linear(embed_dim, num_classes) if distilled else None
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters trained without weight decay (DeiT, timm's convention)."""
        return {"cls_token", "pos_embed"} | ({"dist_token"} if self.dist_token is not None
                                             else set())

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for a `grid` of patches (resized when it differs)."""
        extra, patches = self.pos_embed[:, :self.num_tokens], self.pos_embed[:, self.num_tokens:]
        side = int(patches.shape[1] ** 0.5)
        if (side, side) != grid:
            patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
            patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
        return torch.cat([extra, patches], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> the normalized class (and distillation) tokens [B, num_tokens, D]."""
        x = self.patch_embed(x)  # [B, D, H/p, W/p]
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        tokens = [self.cls_token.expand(len(x), -1, -1)]
        if self.dist_token is not None:
            tokens.append(self.dist_token.expand(len(x), -1, -1))
        x = torch.cat([*tokens, x], dim=1) + self._pos_embed(grid)
        return self.norm(self.blocks(x))[:, :self.num_tokens]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features [B, D]: the class token (averaged with the distillation token)."""
        return self.forward_tokens(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        tokens = self.head_drop(self.forward_tokens(x))
        logits = self.head(tokens[:, 0])  # [B, num_classes]
        if self.head_dist is None:
            return logits
        dist = self.head_dist(tokens[:, 1])
        if self.training:
            return logits, dist  # each head has its own loss
        return (logits + dist) / 2  # late fusion at inference


@register_model
def vit_tiny(**kwargs: Any) -> VisionTransformer:
    return VisionTransformer(**kwargs)


@register_model
def deit_tiny_distilled(**kwargs: Any) -> VisionTransformer:
    return VisionTransformer(**{**kwargs, "distilled": True})
