"""Run by tests/test_train.py under torchrun: train a tiny model on generated shapes, write rank 0's losses."""
import json
import sys

import torch

from clipzoo.train.config import TrainConfig
from clipzoo.train.data import MemoryData, render_shapes
from clipzoo.train.engine import train
from clipzoo.train.model import build_model

VIT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
       "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}


def main(out: str, loss: str) -> None:
    torch.set_num_threads(1)
    cfg = TrainConfig(model_config=VIT, batch_size=16, lr=2e-3, warmup=1, steps=5, output=out + ".run", progress=False,
                      tensorboard=False, log_every=1, workers=0, loss=loss, device="cpu")
    model = build_model(cfg)
    images, captions, _ = render_shapes(80, seed=0, image_size=32, workers=1)
    data = MemoryData(images, captions, model.tokenizer, model.preprocess_cfg["mean"], model.preprocess_cfg["std"])
    losses = {}
    train(cfg, data=data, model=model, on_step=lambda s, r: losses.__setitem__(s, r["loss"]))
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(losses, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
