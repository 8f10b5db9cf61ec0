"""The app: the seed-003 experiment (``torchresume demo``), its networks, MNIST and plots.

Built on the library like any user's program; the checkpoint core and the
harness never import it. The original MNIST files ship inside it
(``mnist_data/``, CC BY-SA 3.0, see its README) so the demo runs offline, from
a source checkout or an installed wheel.
"""
