"""Training and distillation: ``clipzoo.train.train(TrainConfig(...))`` and ``clipzoo train``."""
