"""The ``numbaconv`` command line.

Commands import the engine's heavy parts (data, training, plotting) only when they run.
Errors a user can cause end in one ``Error: ...`` line and exit status 1, never a traceback.
"""

from __future__ import annotations

import os
import sys
import warnings

import click

from .. import __version__
from .errors import CommandGroup, Interrupted, UserError, user_errors


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="numbaconv")
def cli():
    """numbaconv: convolutional networks on Numba, the way "Dive into Deep Learning" teaches them.

    \b
    Examples:
      numbaconv run lenet                        # D2L's LeNet on Fashion-MNIST
      numbaconv run lenet -o activation=relu -o pool=max --optimizer adam --lr 0.001
      numbaconv run my-net.toml                  # layers from the registry, in TOML
      numbaconv summary lenet                    # shapes, parameters, receptive fields
      numbaconv evaluate lenet.npz               # test accuracy of a checkpoint
      numbaconv layers | models | plugins        # what the registry holds
      numbaconv demo edges                       # a Conv2d learns the edge kernel [1, -1]
      numbaconv shape --input 8 --kernel 3 --padding 1 --stride 2
      numbaconv show lenet.npz --out pics/       # kernels and feature maps as PNGs
    """


# --------------------------------------------------------------------------- run

def _set_threads(threads: int | None) -> None:
    import numba

    from ..threads import choose_wait_policy, set_threads

    # before Numba starts OpenMP, which set_threads does
    choose_wait_policy(threads or numba.config.NUMBA_NUM_THREADS)
    set_threads(threads)


def _prepare_outputs(outputs: dict, data_dir) -> None:
    """Fail before training, not after an epoch, when an output cannot be written: its folder
    cannot exist or is not writable, two outputs name the same file, or an output would
    overwrite the data."""
    from ..atomic import check_writable, same_file

    named = [(option, path) for option, path in outputs.items() if path]
    for i, (option, path) in enumerate(named):
        for other, other_path in named[:i]:
            if same_file(path, other_path):
                raise UserError(f"{other} and {option} both name {path}: give each its own file")
        for data_file in _data_files(data_dir):
            if same_file(path, data_file):
                raise UserError(f"{option} {path} would overwrite the data file {data_file}")
        check_writable(path, option)


def _data_files(data_dir) -> list:
    """The data files a run may read: an .npz given as --data, else those in every folder
    Fashion-MNIST is looked up in."""
    from ..data.fashion_mnist import DATA_ENV, SYSTEM_DIR, cache_dir, find_files

    if data_dir is not None and os.path.isfile(data_dir):
        return [data_dir]
    folders = [data_dir, os.environ.get(DATA_ENV), cache_dir(), SYSTEM_DIR]
    return [path for folder in folders if folder
            for path in (find_files(folder) or {}).values()]


def _load_training_data(data_dir, info=None, progress: bool = True):
    """The data as float32 (N, C, H, W) images and int64 labels, plus its source: an .npz or
    an image folder (``info``: its describe_data), else Fashion-MNIST (N, 1, 28, 28)."""
    from types import SimpleNamespace

    from ..data import SAMPLE_NOTICE, as_float_batch, data_kind, load_fashion_mnist, load_own_data

    if data_kind(data_dir) != "fashion-mnist":
        return load_own_data(data_dir, info)
    dataset = load_fashion_mnist(data_dir, progress=progress)
    if dataset.is_sample:
        click.echo(SAMPLE_NOTICE, err=True)
    return SimpleNamespace(train_x=as_float_batch(dataset.train_images),
                           train_y=dataset.train_labels,
                           test_x=as_float_batch(dataset.test_images),
                           test_y=dataset.test_labels, source=dataset.source)


def _stop_on_signals() -> None:
    """SIGTERM ends the run as Ctrl-C does: through every ``finally`` (precompile's child
    processes are stopped, temporary files removed). Both handlers note what they raised,
    so that an interruption that lands inside a compiled kernel is still recognised
    (:func:`numbaconv.cli.errors.wrapped_interruption`)."""
    import signal

    from .errors import raise_noted

    signal.signal(signal.SIGTERM, lambda signum, frame: raise_noted(SystemExit(128 + signum)))
    signal.signal(signal.SIGINT, lambda signum, frame: raise_noted(KeyboardInterrupt()))


@cli.command()
@click.argument("target", metavar="MODEL|SPEC.toml")
@click.option("--epochs", type=int, help="Epochs to train (model's default: LeNet 10).")
@click.option("--batch-size", type=int, help="Examples per step (LeNet: 256).")
@click.option("--lr", type=float, help="Learning rate (LeNet: 0.9 with SGD).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), help="LeNet: sgd.")
@click.option("--seed", type=int, help="Seeds the weights, the shuffling and dropout "
              "(default 0).")
@click.option("--data", "data_dir", type=click.Path(),
              help="Directory with the Fashion-MNIST IDX files, an .npz (x_train, y_train, "
              "x_test, y_test) or a folder of images (train/ and test/, a folder per class).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda needs the cuda extra: pip install 'numbaconv[cuda]'.")
@click.option("--threads", type=int,
              help="CPU threads (default: all cores).")
@click.option("--resize", type=click.IntRange(1, 4096), metavar="N",
              help="Resize each batch's images to NxN (bilinear), as D2L does for its "
              "modern networks (model's default: none for LeNet).")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A model option, e.g. -o activation=relu -o pool=max. Repeatable.")
@click.option("--save", "save_path", type=click.Path(dir_okay=False),
              help="Write a checkpoint here after every epoch.")
@click.option("--resume", "resume_path", type=click.Path(dir_okay=False),
              help="Continue the run saved in this checkpoint, saving to it after every "
              "epoch (unless --save names another file).")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False),
              help="Write per-epoch metrics here, one JSON object per line.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Draw loss and accuracy per epoch into this PNG (needs matplotlib).")
@click.option("--workers", type=click.IntRange(1), metavar="N",
              help="Train data-parallel on N processes of this machine (MPI; needs the mpi "
              "extra: pip install 'numbaconv[mpi]'), each on cores/N threads. On several "
              "machines: mpiexec -n N -f hostfile numbaconv run ...")
@click.pass_context
@user_errors
def run(ctx, target, epochs, batch_size, lr, optimizer, seed, data_dir, device, threads,
        resize, options, save_path, resume_path, metrics_path, plot_path, workers):
    """Train MODEL (a registered name) or the network in SPEC.toml on Fashion-MNIST.

    Prints, per epoch, the training loss and accuracy, the test accuracy and the speed, and
    at the end which files it wrote.

    \b
    Data-parallel on several processes (MPI; --batch-size stays the global batch):
      numbaconv run lenet --workers 2            # 2 processes on this machine
      mpiexec -n 8 -f hostfile numbaconv run lenet --save lenet.npz

    \b
    A spec lists registry layers (plugins' too), and may carry its own training settings;
    shapes are checked before training:
      layers = [
        {type = "Conv2d", in_channels = 1, out_channels = 6, kernel_size = 5, padding = 2},
        {type = "ReLU"}, {type = "MaxPool2d", kernel_size = 2},
        {type = "Flatten"}, {type = "Linear", in_features = 1176, out_features = 10},
      ]
      [train]
      optimizer = "adam"
      lr = 0.001
    """
    from ..training import distributed as mpi

    on_the_cpu_only = UserError("--workers and mpiexec train on the CPU; --device cuda trains "
                                "in one process")
    arguments = (target, epochs, batch_size, lr, optimizer, seed, data_dir, device, threads,
                 resize, options, save_path, resume_path, metrics_path, plot_path)
    ranks = mpi.launched_size()
    if ranks == 1:
        if (workers or 1) > 1:
            if device != "cpu":
                raise on_the_cpu_only
            ctx.exit(_launch_workers(ctx, workers, threads))
        _train(*arguments, distributed=None)
        return
    try:
        distributed = mpi.Distributed.start()
    except mpi.MissingMPI as error:
        raise UserError(f"mpiexec started {ranks} ranks, but {error}") from None
    with distributed.session():  # from here on, one rank reports
        if device != "cpu":
            raise on_the_cpu_only
        if workers is not None and workers != ranks:
            raise UserError(f"--workers {workers} under mpiexec with {ranks} ranks: give one "
                            "or the other")
        _train(*arguments, distributed=distributed)


def _launch_workers(ctx, workers: int, threads: int | None) -> int:
    """Run this very command without ``--workers`` on ``workers`` ranks through mpiexec, each
    on ``--threads`` threads or its share of the cores; returns the exit status."""
    from ..training import distributed as mpi

    command = [sys.executable, "-m", "numbaconv", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params[param.name]
        if param.name == "workers" or value is None:
            continue
        if isinstance(param, click.Argument):
            command.append(str(value))
        elif param.multiple:
            for item in value:
                command += [param.opts[0], str(item)]
        else:
            command += [param.opts[0], str(value)]
    try:
        return mpi.launch(workers, command, threads or max(1, mpi.usable_cores() // workers))
    except mpi.MissingMPI as error:
        raise UserError(f"--workers {workers}: {error}") from None


@user_errors
def _train(target, epochs, batch_size, lr, optimizer, seed, data_dir, device, threads, resize,
           options, save_path, resume_path, metrics_path, plot_path, distributed):
    """``run``'s training, in one process or as one rank of ``distributed``."""
    from .. import checkpoint as ckpt
    from ..data import describe_data
    from ..devices import get_device
    from ..layers import layer_spec
    from ..network import (
        build,
        check_memory,
        check_shapes,
        from_spec,
        input_shape,
        parse_options,
    )
    from ..training import Loop, Settings, make_optimizer
    from ..training import callbacks as cb

    if device == "cuda":
        from ..kernels.cuda.device import cuda_available

        available, reason = cuda_available()
        if not available:
            raise UserError(f"--device cuda: {reason}")
    root = distributed is None or distributed.is_root  # the process that prints and writes
    if threads is None and distributed is not None:
        import numba

        from ..training.distributed import usable_cores

        threads = min(numba.config.NUMBA_NUM_THREADS,
                      distributed.threads_per_rank(usable_cores()))
    _set_threads(threads)
    if plot_path and root:
        from ..lessons.plotting import require_matplotlib

        require_matplotlib()
    if resume_path and not save_path:
        save_path = resume_path  # a resumed run goes on saving where it was saved
    if root:
        _prepare_outputs({"--save": save_path, "--metrics": metrics_path, "--plot": plot_path},
                         data_dir)
    data_info = describe_data(data_dir)  # shapes and classes, before loading it
    saved = None
    if resume_path:
        # under MPI rank 0 reads it: only its machine needs the file
        saved = ckpt.load(resume_path) if root else None
        if distributed is not None:
            saved = distributed.broadcast(saved)
    # the image side the model is built for: --resize, else the resumed run's, else the
    # model's own (D2L's recipe)
    side = resize if resize is not None or saved is None else saved.train.get("resize")
    network = build(target, parse_options(options), 0 if seed is None else seed,
                    data_info.shape, len(data_info.classes), resize=side)
    model = network.model
    given = {"batch_size": batch_size, "lr": lr, "optimizer": optimizer, "seed": seed,
             "resize": resize}
    settings_from = {**Settings().__dict__, **network.train_defaults}
    history, start = [], 1
    if resume_path:
        if layer_spec(from_spec(saved.spec)) != layer_spec(model):
            raise ckpt.CheckpointError(
                f"checkpoint {resume_path} holds {ckpt.describe(saved.model, saved.options)}, "
                f"another architecture than {ckpt.describe(network.name, network.options)}")
        changed = [f"--{k.replace('_', '-')}" for k, v in given.items()
                   if v is not None and v != saved.train.get(k)]
        if changed:
            raise UserError(f"--resume continues the run saved in {resume_path} with its own "
                            f"settings; {', '.join(changed)} would change them (start a new "
                            "run instead)")
        settings_from.update(saved.train)
        history, start = list(saved.history), saved.epoch + 1
    else:
        settings_from.update({k: v for k, v in given.items() if v is not None})
    if epochs is not None:
        settings_from["epochs"] = epochs
    settings = Settings(**settings_from)
    check_shapes(model, network.source, settings.resize, data_info.shape, len(data_info.classes))
    check_memory(model, settings.batch_size, settings.resize, data_info.shape)
    if start > settings.epochs:
        raise UserError(f"{resume_path} is already at epoch {start - 1}; ask for more with "
                        f"--epochs (now {settings.epochs})")
    target_device = get_device(device)
    model.to(target_device)  # the optimizer is built on the parameters where they live
    opt = make_optimizer(settings.optimizer, model.named_params(), settings.lr)
    if resume_path:
        model.load_state_dict(saved.params)
        opt.load_state_dict(saved.optimizer)
        click.echo(f"resumed {resume_path} after epoch {saved.epoch}")
    _stop_on_signals()
    if device == "cpu":
        # on an empty Numba cache, compile on every core at once, reading the data meanwhile
        from ..precompile import precompile

        def prepare():
            loaded = []
            precompile(model, meanwhile=lambda: loaded.append(
                           _load_training_data(data_dir, data_info, progress=root)),
                       input_shape=(settings.batch_size,) + input_shape(settings.resize,
                                                                        data_info.shape),
                       announce=lambda line: click.echo(line, err=True),
                       optimizer=settings.optimizer)
            return loaded[0]

        # under MPI, one rank per machine first: it fills the kernel and data caches
        data = prepare() if distributed is None else distributed.in_turn_on_node(prepare)
    else:
        data = _load_training_data(data_dir, data_info)
    if distributed is not None:
        distributed.check_same_data(data)
        distributed.broadcast_state(model)

    def make_checkpoint(loop, epoch):
        train = {k: v for k, v in settings.__dict__.items() if k != "epochs"}
        return ckpt.Checkpoint(spec=layer_spec(model), params=model.state_dict(), epoch=epoch,
                               model=network.name, options=network.options,
                               optimizer=opt.state_dict(), train=train, history=loop.history,
                               classes=list(data_info.classes),
                               input_shape=list(data_info.shape))

    def echo(line):
        click.echo(line)

    callbacks = [cb.ProgressBar()] if sys.stderr.isatty() else []
    callbacks += [cb.EpochPrinter(echo),
                  cb.ChanceWatch(len(data_info.classes), lambda line: click.echo(f"Warning: {line}",
                                                                      err=True))]
    if not root:
        callbacks = []  # rank 0 prints and writes for all
    if save_path and root:
        callbacks.append(cb.Checkpointing(save_path, make_checkpoint, echo))
    if metrics_path and root:
        callbacks.append(cb.MetricsWriter(metrics_path, echo))
    if plot_path and root:
        callbacks.append(cb.PlotWriter(plot_path, network.source, echo))
    loop = Loop(model, opt, data, settings, device=target_device, callbacks=callbacks,
                history=history, distributed=distributed)
    ranks = "" if distributed is None else \
        f" on {distributed.size} ranks of {threads} thread{'s' if threads > 1 else ''} each"
    click.echo(f"training {network.source} on {len(data.train_x)} images from {data.source}"
               f"{ranks}: {settings.optimizer} lr {settings.lr:g}, batch "
               f"{settings.batch_size}, {settings.epochs} epochs, {model.num_params()} "
               "parameters")
    loop.run(start)
    if distributed is not None and distributed.steps:
        per_step = distributed.allreduce_seconds / distributed.steps
        click.echo(f"communication in the last epoch: {per_step * 1e3:.2f} ms per step in "
                   f"Allreduce ({distributed.gradient_bytes / 1e3:,.0f} kB), "
                   f"{distributed.allreduce_seconds / loop.history[-1]['train_seconds']:.0%} "
                   "of its training time (rank 0, waiting for slower ranks included)")


# --------------------------------------------------------------------------- evaluate

@cli.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT")
@click.option("--data", "data_dir", type=click.Path(),
              help="Directory with the Fashion-MNIST IDX files, an .npz or an image folder.")
@click.option("--threads", type=int,
              help="CPU threads (default: all cores).")
@click.option("--resize", type=click.IntRange(1, 4096), metavar="N",
              help="Resize the images to NxN (default: as the checkpoint's run did).")
@user_errors
def evaluate(checkpoint_path, data_dir, threads, resize):
    """Print the test accuracy of a saved CHECKPOINT as 'test_acc 0.xxxx'."""
    from ..data import describe_data
    from ..network import check_shapes, load_model
    from ..training import evaluate as accuracy

    _set_threads(threads)
    model, saved = load_model(checkpoint_path)
    side = resize if resize is not None else saved.train.get("resize")
    data_info = describe_data(data_dir)
    if saved.classes is not None and tuple(saved.classes) != tuple(data_info.classes):
        raise UserError(f"{checkpoint_path} classifies {', '.join(saved.classes)[:80]}; the "
                        f"data's classes are {', '.join(data_info.classes)[:80]}")
    check_shapes(model, checkpoint_path, side, data_info.shape, len(data_info.classes))
    data = _load_training_data(data_dir, data_info)
    click.echo(f"test_acc {accuracy(model, data.test_x, data.test_y, resize=side):.4f}")


# --------------------------------------------------------------------------- registry

@cli.command()
@user_errors
def layers():
    """List the registered layers and the plugin that gave each."""
    from ..plain_text import first_line
    from ..registry import layer_entries

    for name, (layer_class, plugin) in sorted(layer_entries().items()):
        click.echo(f"{name:<16} {plugin:<26} {first_line(layer_class)}")


@cli.command()
@user_errors
def models():
    """List the registered models and the plugin that gave each."""
    from ..registry import model_entries

    for name, entry in sorted(model_entries().items()):
        click.echo(f"{name:<16} {entry.plugin:<26} {entry.description}")


@cli.command()
@user_errors
def plugins():
    """List the loaded plugins (built-ins included) with their versions and hooks."""
    from ..registry import plugin_info

    for info in plugin_info():
        click.echo(f"{info['name']:<26} {info['package']} {info['version']}  "
                   f"hooks: {', '.join(info['hooks'])}")


@cli.command()
@click.argument("target", metavar="MODEL|SPEC.toml")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A model option, e.g. -o activation=relu. Repeatable.")
@click.option("--resize", type=click.IntRange(1, 4096), metavar="N",
              help="For NxN images (default: the model's training size, else 28).")
@user_errors
def summary(target, options, resize):
    """The tree of MODEL or SPEC.toml: output shapes, parameters, receptive fields, FLOPs."""
    from ..layers.containers import format_summary, summary
    from ..network import build, check_shapes, input_shape, parse_options

    network = build(target, parse_options(options), seed=0, resize=resize)
    side = resize if resize is not None else network.train_defaults.get("resize")
    check_shapes(network.model, network.source, side)
    click.echo(format_summary(summary(network.model, (1,) + input_shape(side))))


def _load_plugin_commands() -> None:
    # Last, so plugins can add commands (and a broken plugin only warns).
    from ..registry import add_commands

    add_commands(cli)


def main() -> None:
    """The console entry (``numbaconv``, ``python -m numbaconv``): plugins' commands, then the
    command line; a failing plugin is one ``Warning: ...`` line on stderr."""
    from ..registry import PluginWarning

    show_warning = warnings.showwarning

    def show_plugin_warning(message, category, *args, **kwargs):
        if issubclass(category, PluginWarning):
            click.echo(f"Warning: {message}", err=True)
        else:
            show_warning(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("default", PluginWarning)  # shown once each, whatever -W says
        warnings.showwarning = show_plugin_warning
        try:
            _load_plugin_commands()  # imports plugins: Ctrl-C may come here, before Click
        except KeyboardInterrupt:
            Interrupted().show()
            sys.exit(Interrupted.exit_code)
        cli()


# --------------------------------------------------------------------------- demos, shape, show

from .demos import demo, shape, show  # noqa: E402

cli.add_command(demo)
cli.add_command(shape)
cli.add_command(show)

from .bench import bench  # noqa: E402

cli.add_command(bench)

from .interop import export_command, import_command, predict  # noqa: E402

cli.add_command(export_command)
cli.add_command(import_command)
cli.add_command(predict)
