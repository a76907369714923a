"""numbaconv-lrn: AlexNet's local response normalization for numbaconv, packaged as a plugin.

Installing this package is all it takes: its entry point (group ``numbaconv``, name ``lrn``)
points at this module, whose three ``@numbaconv.hookimpl`` functions add

* the layer ``LocalResponseNorm`` (:mod:`numbaconv_lrn.layers`), computed by the plugin's own
  Numba kernels on the CPU (:mod:`numbaconv_lrn.cpu`) and on a CUDA GPU
  (:mod:`numbaconv_lrn.cuda`), dispatched by array type in :mod:`numbaconv_lrn.functional`;
* the model ``lenet-lrn`` with its training defaults (:mod:`numbaconv_lrn.models`);
* the command ``numbaconv lrn-info``.
"""

from numbaconv import hookimpl

from .functional import local_response_norm, local_response_norm_backward
from .layers import LocalResponseNorm
from .models import TRAIN_DEFAULTS, lenet_lrn

__all__ = ["LocalResponseNorm", "local_response_norm", "local_response_norm_backward",
           "lenet_lrn", "TRAIN_DEFAULTS"]

LAYERS = (LocalResponseNorm,)
MODEL_DESCRIPTION = "LeNet-5 with ReLU, AlexNet's LRN and max pooling, 1x28x28 inputs"


@hookimpl
def register_layers(register):
    for layer_class in LAYERS:
        register(layer_class)


@hookimpl
def register_models(register):
    register("lenet-lrn", lenet_lrn, train_defaults=TRAIN_DEFAULTS,
             description=MODEL_DESCRIPTION)


@hookimpl
def register_commands(cli):
    import click

    @cli.command(name="lrn-info")
    def lrn_info():
        """Show the layer and the model that numbaconv-lrn adds."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            own_version = version("numbaconv-lrn")
        except PackageNotFoundError:  # imported from a source tree, not installed
            own_version = "not installed"
        click.echo(f"numbaconv-lrn {own_version}")
        click.echo("layers:")
        for layer_class in LAYERS:
            summary = (layer_class.__doc__ or "").strip().split("\n")[0]
            click.echo(f"  {layer_class.__name__:<18} {summary}")
        defaults = ", ".join(f"{k}={v}" for k, v in TRAIN_DEFAULTS.items())
        click.echo("models:")
        click.echo(f"  {'lenet-lrn':<18} {MODEL_DESCRIPTION}; train defaults: {defaults}")
