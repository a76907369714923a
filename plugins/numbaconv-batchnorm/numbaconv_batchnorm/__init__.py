"""numbaconv-batchnorm: batch normalization for numbaconv, packaged as a plugin.

Installing this package is all it takes: its entry point (group ``numbaconv``, name
``batchnorm``) points at this module, whose three ``@numbaconv.hookimpl`` functions add

* the layers ``BatchNorm1d`` and ``BatchNorm2d`` (:mod:`numbaconv_batchnorm.layers`),
* the model ``lenet-bn`` with D2L's training defaults (:mod:`numbaconv_batchnorm.models`),
* the command ``numbaconv bn-info``.
"""

from numbaconv import hookimpl

from .kernels import batch_norm, batch_norm_backward
from .layers import BatchNorm1d, BatchNorm2d
from .models import TRAIN_DEFAULTS, lenet_bn

__all__ = ["BatchNorm1d", "BatchNorm2d", "batch_norm", "batch_norm_backward", "lenet_bn",
           "TRAIN_DEFAULTS"]

LAYERS = (BatchNorm1d, BatchNorm2d)


@hookimpl
def register_layers(register):
    for layer_class in LAYERS:
        register(layer_class)


@hookimpl
def register_models(register):
    register("lenet-bn", lenet_bn, train_defaults=TRAIN_DEFAULTS,
             description="LeNet-5 with batch normalization (D2L 8.5), 1x28x28 inputs")


@hookimpl
def register_commands(cli):
    import click

    @cli.command(name="bn-info")
    def bn_info():
        """Show the layers and models that numbaconv-batchnorm adds."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            own_version = version("numbaconv-batchnorm")
        except PackageNotFoundError:  # imported from a source tree, not installed
            own_version = "not installed"
        click.echo(f"numbaconv-batchnorm {own_version}")
        click.echo("layers:")
        for layer_class in LAYERS:
            summary = (layer_class.__doc__ or "").strip().split("\n")[0]
            click.echo(f"  {layer_class.__name__:<12} {summary}")
        defaults = ", ".join(f"{k}={v}" for k, v in TRAIN_DEFAULTS.items())
        click.echo("models:")
        click.echo(f"  {'lenet-bn':<12} LeNet-5 with batch normalization (D2L 8.5); "
                   f"train defaults: {defaults}")
