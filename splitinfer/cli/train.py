"""``splitinfer train``, ``train-teacher`` and ``migrate``: arguments only; the use cases live in ``shared.training``
(``recipe.train_bundle``, ``teacher.train_teacher``, ``recipe.migrate_ladder``), their options documented there."""

from __future__ import annotations

import argparse

from . import command_line
from shared.options import DefaultsHelpFormatter, options


def setup_train(p: argparse.ArgumentParser) -> None:
    p.formatter_class = DefaultsHelpFormatter
    p.epilog = (
        "Images listed by --data are used for training except those held out by the fixed rule "
        "(shared.data.is_heldout: CRC32 of the file name is odd); --eval-data uses only the held-out ones, "
        "so no image ever both trains and evaluates. Label-free distillation is the default. Exit status 3: the "
        "network was judged weak on the held-out images (the bundle is written and marked; --allow-weak: exit 0)."
    )
    p.add_argument("--no-eval", action="store_true", help="do not measure the ladder after training")


def run_train(args) -> int:
    from shared.training.budget import process_started
    from shared.training.recipe import TrainOptions, train_bundle

    opts = options(TrainOptions, args, command=command_line("train"))
    if args.no_eval:
        opts.eval_data = []
    # from the `splitinfer` entry point the budget counts from the process's start (imports included)
    return train_bundle(opts, started=process_started() if opts.command else None)


def setup_train_teacher(p: argparse.ArgumentParser) -> None:
    from shared.training.teacher import MODEL

    p.formatter_class = DefaultsHelpFormatter
    p.epilog = (f"The weights go to --out (default: where {MODEL} looks for them, $SPLITINFER_SEG_TEACHER or the "
                "user cache); OUT.json records the command, the time taken and the test scores; OUT.ckpt lets an "
                "interrupted run resume.")


def run_train_teacher(args) -> int:
    from shared.training.teacher import TeacherOptions, train_teacher

    train_teacher(options(TeacherOptions, args, command=command_line("train-teacher")))
    return 0


def setup_migrate(p: argparse.ArgumentParser) -> None:
    p.formatter_class = DefaultsHelpFormatter
    p.epilog = (
        "Only h_s is retrained (on the bits of y; g_a, h_a and g_s are frozen, so y and z are unchanged). "
        "Training images follow the held-out rule of `splitinfer train`; --eval-data measures the new ladder "
        "on held-out images and records the figures in its manifest."
    )


def run_migrate(args) -> int:
    from shared.training.recipe import MigrateOptions, migrate_ladder

    migrate_ladder(options(MigrateOptions, args, command=command_line("migrate")))
    return 0
