"""``clipzoo train``: flags, a TOML / YAML config, or a named recipe; same command under torchrun."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import note, user_errors


@user_errors
def train(
    recipe: str | None = typer.Option(None, "--recipe", help="A named recipe, e.g. tiny-shapes (flags override it)."),
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="A .toml / .yaml / .json config (flags override it)."),
    model: str | None = typer.Option(None, "--model", "-m",
                                     help="open_clip config name (random init) or a registry spec / checkpoint."),
    pretrained: bool | None = typer.Option(None, "--pretrained/--no-pretrained",
                                           help="Start from the model's weights."),
    data: list[str] | None = typer.Option(None, "--data", "-d", help="Training data (repeatable): CSV, shards, "
                                          "TFRecord, folder, fsspec URL, shapes:N or shapes-classes:N."),
    output: str | None = typer.Option(None, "--output", "-o", help="Run folder: checkpoints/, model/, tensorboard/."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (overrides --epochs)."),
    epochs: int | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    lr: float | None = typer.Option(None, "--lr"),
    weight_decay: float | None = typer.Option(None, "--weight-decay"),
    warmup: int | None = typer.Option(None, "--warmup", help="Warmup steps."),
    loss: str | None = typer.Option(None, "--loss", help="Objective, e.g. infonce, siglip."),
    precision: str | None = typer.Option(None, "--precision", help="fp32, bf16 or fp16 (autocast)."),
    grad_accum: int | None = typer.Option(None, "--grad-accum"),
    grad_clip: float | None = typer.Option(None, "--grad-clip"),
    ema: float | None = typer.Option(None, "--ema", help="EMA decay of the weights, e.g. 0.999."),
    lock_image: bool | None = typer.Option(None, "--lock-image/--no-lock-image", help="Freeze the image tower (LiT)."),
    lock_text: bool | None = typer.Option(None, "--lock-text/--no-lock-text", help="Freeze the text tower."),
    train_num_samples: int | None = typer.Option(None, "--train-num-samples",
                                                 help="Samples per epoch for streamed shards."),
    img_key: str | None = typer.Option(None, "--img-key"),
    caption_key: str | None = typer.Option(None, "--caption-key"),
    workers: int | None = typer.Option(None, "--workers"),
    eval_data: str | None = typer.Option(None, "--eval-data", help="Zero-shot evaluation data during training."),
    eval_every: int | None = typer.Option(None, "--eval-every"),
    save_every: int | None = typer.Option(None, "--save-every", help="Checkpoint every N steps (always at the end)."),
    resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint path."),
    seed: int | None = typer.Option(None, "--seed"),
    device: str | None = typer.Option(None, "--device"),
    progress: bool | None = typer.Option(None, "--progress/--no-progress"),
    teacher: str | None = typer.Option(None, "--teacher", help="Distil from this frozen model: a registry spec, hub "
                                       "id, checkpoint or trained folder (overrides the config's teacher)."),
    towers: str | None = typer.Option(None, "--towers", help="A compositional model, as the config's towers table: "
                                      "JSON or a .json/.toml/.yaml file (replaces the config's model)."),
    adapters: str | None = typer.Option(None, "--adapters", help="peft adapters, as the config's adapters table: "
                                        "JSON or a .json/.toml/.yaml file."),
) -> None:
    """Train or fine-tune a contrastive model; runs alone or under torchrun with no change.

    \b
      clipzoo train --recipe tiny-shapes
      clipzoo train --model ViT-B-32 --data train.csv --caption-key title --steps 1000 --output runs/b32
      torchrun --nproc_per_node 2 -m clipzoo.cli train --config run.toml
      clipzoo train --config run.toml --resume latest
      clipzoo train --config run.toml --teacher runs/big/model --loss simreg
      clipzoo train --towers towers.json --adapters '{"image": {"method": "lora", "r": 8}}' --data train.csv
    """
    from clipzoo.train.config import ConfigError, TrainConfig, load_config, table_option
    from clipzoo.train.engine import train as run
    from clipzoo.train.recipes import recipe_config

    base = recipe_config(recipe) if recipe else TrainConfig()
    flags = {k: v for k, v in locals().items() if k not in ("recipe", "config", "base", "TrainConfig", "load_config",
                                                            "run", "recipe_config", "ConfigError", "table_option")
             and v is not None}
    if "data" in flags and not flags["data"]:
        flags.pop("data")
    if towers is not None:
        flags["towers"] = _checked(table_option(towers, "--towers", "towers"), "--towers", ConfigError)
    if adapters is not None:
        flags["adapters"] = _checked(table_option(adapters, "--adapters", "adapters"), "--adapters", ConfigError)
    cfg = load_config(config, flags, base)
    result = run(cfg)
    last = result.history[-1] if result.history else {}
    summary = f"trained {result.steps} steps; model in {result.model_dir}"
    if "loss" in last:
        summary += f"; final loss {last['loss']:.4f}"
    if result.evals:
        ev = result.evals[-1]
        summary += "; zero-shot " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "step")
    if result.skipped_images:
        summary += f"; skipped {result.skipped_images} unreadable image(s)"
    note(summary)


def _checked(table: dict, flag: str, error: type) -> dict:
    """The table a flag gave, its keys checked now so that an error names the flag."""
    if flag == "--towers":
        from clipzoo.models.spec import check_towers as check
    else:
        from clipzoo.train.checks import check_adapters as check
    try:
        check(table)
    except error as err:
        raise error(f"{flag}: {err}") from None
    return table


def register(app: typer.Typer) -> None:
    app.command("train")(train)
