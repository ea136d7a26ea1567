"""Run by tests/test_train.py under torchrun: train a tiny model on generated shapes, write rank 0's losses.

``python ddp_train_worker.py OUT LOSS`` trains an open_clip ViT; ``… OUT LOSS composite TEACHER_DIR`` trains a
compositional model (open_clip towers, a DINO image head) with LoRA adapters on both towers, distilling from the
teacher folder, and every rank also writes its final weights to ``OUT.rankN.pt``.
"""
import json
import sys

import torch

from clipzoo.train.config import TrainConfig
from clipzoo.train.data import MemoryData, render_shapes
from clipzoo.train.engine import train
from clipzoo.train.model import build_model

VIT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
       "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}
TOWERS = {"image": {"source": "open_clip", "config": VIT}, "text": {"source": "open_clip", "config": VIT},
          "image_head": {"kind": "dino", "layers": 2, "hidden": 32, "bottleneck": 8}, "text_head": "linear",
          "embed_dim": 16}
ADAPTERS = {"image": {"method": "lora", "r": 2, "target_modules": ["c_fc", "c_proj"]},
            "text": {"method": "lora", "r": 2, "target_modules": ["c_fc"]}}


def main(out: str, loss: str, mode: str = "plain", teacher: "str | None" = None) -> None:
    torch.set_num_threads(1)
    model_keys = ({"model_config": VIT} if mode == "plain" else
                  {"towers": TOWERS, "adapters": ADAPTERS, "teacher": teacher})
    cfg = TrainConfig(**model_keys, batch_size=16, lr=2e-3, warmup=1, steps=5, output=out + ".run", progress=False,
                      tensorboard=False, log_every=1, workers=0, loss=loss, device="cpu")
    model = build_model(cfg)
    images, captions, _ = render_shapes(80, seed=0, image_size=32, workers=1)
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"])
    losses = {}
    train(cfg, data=data, model=model, on_step=lambda s, r: losses.__setitem__(s, r["loss"]))
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if mode != "plain":
        torch.save(model.module.state_dict(), f"{out}.rank{rank}.pt")
    if rank == 0:
        with open(out, "w") as f:
            json.dump(losses, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
