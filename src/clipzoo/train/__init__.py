"""Training and distillation: ``clipzoo.train.engine.train(TrainConfig(...))`` and ``clipzoo train``.

- :mod:`.config` (``TrainConfig``, config files, flags), :mod:`.recipes` (named recipes) — torch-free;
- :mod:`.engine` (``train``), :mod:`.trainer` (the ``Trainer``) and :mod:`.phases` (its phases);
- :mod:`.model` (build / save the model in training), :mod:`.data` (batches), :mod:`.losses` (objectives);
- plug-ins: :mod:`.distill` (a frozen teacher) and :mod:`.adapters` (peft adapters);
- :mod:`.distributed` (torchrun / DDP), :mod:`.storage` (local or fsspec run folders), :mod:`.curves` (plots).

Compositional models themselves (towers, heads, their saved folders) live in :mod:`clipzoo.models`.
"""
