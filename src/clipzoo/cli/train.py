"""``clipzoo train``: flags, a TOML / YAML config, or a named recipe; same command under torchrun.

``--engine jax`` trains in JAX/Flax (:mod:`clipzoo.train.jax`) and also takes open_clip_jax's ``main.py`` options
under their names (``--train-path``, ``--global-batch-size``, ``--learning-rate``, … — :data:`JAX_FLAGS`).
"""
from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path

import typer

from ._common import note, user_errors

JAX_FLAGS: dict[str, type] = {  # open_clip_jax main.py's options (and clipzoo's --devices, --model-config)
    "--train-path": str, "--valid-path": str, "--train-n-samples": int, "--valid-n-samples": int,
    "--image-key": str, "--text-key": str, "--image-size": int, "--context-len": int, "--global-batch-size": int,
    "--shuffle-buffer-size": int, "--model-name": str, "--temp-init": float, "--dtype": str,
    "--learning-rate": float, "--learning-rate-scheduler": str, "--n-warmup-steps": int, "--warmup-init": float,
    "--beta1": float, "--beta2": float, "--eps": float, "--n-epochs": int, "--log-freq": int,
    "--checkpoint-dir": str, "--checkpoint-freq": int, "--resume-from-checkpoint": str, "--devices": int,
    "--model-config": json.loads,
}
NOT_JAX = ("pretrained", "grad_accum", "grad_clip", "ema", "lock_image", "lock_text", "device", "teacher", "towers",
           "adapters")


@user_errors
def train(
    ctx: typer.Context,
    engine: str = typer.Option("torch", "--engine", help="torch, mindspore, or jax (open_clip_jax's trainer: also "
                               "takes its main.py options --train-path, --global-batch-size, --learning-rate, …)."),
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
      clipzoo train --engine mindspore --model tiny-ViT --data train.csv --steps 10 --output runs/ms
      clipzoo train --engine jax --train-path train.csv --image-key image_path --text-key caption \\
          --global-batch-size 128 --model-name vit-base-patch32 --learning-rate 1e-3 --n-epochs 30
    """
    if engine != "torch" or ctx.args:
        given = {k: v for k, v in locals().items() if k not in ("ctx", "engine", "config", "recipe")}
        if engine == "mindspore":
            return _train_mindspore(given, recipe, config, ctx.args)
        return _train_jax(given, recipe, config, ctx, engine)
    from clipzoo.train.config import ConfigError, TrainConfig, load_config, table_option
    from clipzoo.train.engine import train as run
    from clipzoo.train.recipes import recipe_config

    base = recipe_config(recipe) if recipe else TrainConfig()
    flags = {k: v for k, v in locals().items() if k not in ("recipe", "config", "base", "TrainConfig", "load_config",
                                                            "run", "recipe_config", "ConfigError", "table_option",
                                                            "ctx", "engine") and v is not None}
    if "data" in flags and not flags["data"]:
        flags.pop("data")
    if towers is not None:
        flags["towers"] = _checked(table_option(towers, "--towers", "towers"), "--towers", ConfigError)
    if adapters is not None:
        flags["adapters"] = _checked(table_option(adapters, "--adapters", "adapters"), "--adapters", ConfigError)
    cfg = load_config(config, flags, base, flags=True)  # a bad value is blamed on its flag
    note(_summary(run(cfg)))


def _summary(result) -> str:
    last = result.history[-1] if result.history else {}
    summary = f"trained {result.steps} steps; model in {result.model_dir}"
    if "loss" in last:
        summary += f"; final loss {last['loss']:.4f}"
    if result.evals:
        ev = result.evals[-1]
        summary += "; zero-shot " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "step")
    if result.skipped_images:
        summary += f"; skipped {result.skipped_images} sample(s): unreadable image or no caption"
    return summary


def _refuse_unknown(ctx: typer.Context) -> None:
    """An option that is neither this command's nor open_clip_jax's (``--stepz``): one line naming the nearest
    option (the rest go on to :func:`_train_jax`, which says they need ``--engine jax``)."""
    from clipzoo.train.config import ConfigError

    known = [o for p in ctx.command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    for arg in ctx.args:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name not in JAX_FLAGS and name != "--grad-checkpoint":
            near = difflib.get_close_matches(name, known + list(JAX_FLAGS), n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else "; see clipzoo train --help"
            raise ConfigError(f"unknown option {name}{hint}")


def _train_mindspore(given: dict, recipe: "str | None", config: "Path | None", extra: list[str]) -> None:
    """``--engine mindspore``: the torch trainer's config, trained in MindSpore (a check of the port)."""
    from clipzoo.train.mindspore import config_from_flags, train_mindspore

    result = train_mindspore(config_from_flags(given, recipe, config, extra))
    note(_summary(result).replace(" steps;", " steps (mindspore);", 1)
         + f"; MindSpore checkpoint {result.model_dir}/model.ckpt")


class _JaxArgs(argparse.ArgumentParser):
    def error(self, message: str):
        from clipzoo.train.config import ConfigError

        raise ConfigError(f"--engine jax: {message}")


def _train_jax(given: dict, recipe: "str | None", config: "Path | None", ctx: typer.Context, engine: str) -> None:
    """``--engine jax``: clipzoo's flags that apply, then open_clip_jax's, over the config file and the recipe."""
    from clipzoo.train.config import ConfigError

    extra = ctx.args
    if engine == "torch":
        _refuse_unknown(ctx)
    if engine != "jax":
        raise ConfigError(f"unknown engine {engine!r}: use torch, jax or mindspore" if engine != "torch" else
                          f"unknown option(s) {' '.join(extra)} (open_clip_jax's options need --engine jax)")
    from clipzoo.train.jax import jax_recipe, load_jax_config, train_jax

    parser = _JaxArgs(prog="clipzoo train --engine jax", allow_abbrev=False, add_help=False)
    for flag, kind in JAX_FLAGS.items():
        parser.add_argument(flag, type=kind, default=None)
    parser.add_argument("--grad-checkpoint", action="store_true", default=None)
    flags = {k: v for k, v in given.items() if v is not None and not (k == "data" and not v)}
    unsupported = [k for k in flags if k in NOT_JAX]
    if unsupported:
        raise ConfigError(f"--{unsupported[0].replace('_', '-')} is not an option of --engine jax")
    flags.update({k: v for k, v in vars(parser.parse_args(extra)).items() if v is not None})
    cfg = load_jax_config(config, flags, jax_recipe(recipe) if recipe else None)
    result = train_jax(cfg)
    last = result.history[-1] if result.history else {}
    summary = f"trained {result.steps} steps (jax); parameters in {result.model_dir}/params.pkl"
    if "loss" in last:
        summary += f"; final loss {last['loss']:.4f}"
    evals = [e for e in result.evals if "acc1" in e or "valid_loss" in e]
    if evals:
        summary += "; " + ", ".join(f"{k} {v:.4f}" for k, v in evals[-1].items() if k not in ("step", "epoch"))
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
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train)
