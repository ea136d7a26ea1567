"""The phases of a training run, in the order :class:`~clipzoo.train.trainer.Trainer` goes through them:

- :mod:`.model`: the module on its device, in its training layout (LiT locks, channels-last, padding-free text);
- :mod:`.data`: the batches (generated shapes, or the readers' sources) and held-out evaluation images;
- :mod:`.optimiser`: AdamW parameter groups, the schedule, the gradient scaler, EMA;
- :mod:`.objective`: the loss, its widths filled in, and ProtoCLIP's episode bank;
- :mod:`.step`: one step's forward and backward (features cached across accumulated micro-batches);
- :mod:`.metrics`: what a step logs (metrics.jsonl, tensorboard);
- :mod:`.evaluate`: zero-shot evaluation of the model in training;
- :mod:`.checkpoint`: checkpoints written atomically, exact resume, and the trained model folder.
"""
