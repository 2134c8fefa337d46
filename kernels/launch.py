"""``python -m skerry.kernels.launch --pool cpu|gpu -f CONNECTION_FILE``: a skerry kernel.

The command of the skerry kernel specs. It starts the kernel's session first (its parts
connect in background threads while ipykernel loads), then an ipykernel that loads the
``skerry.kernels.session`` IPython extension: ``skerry`` in the user's namespace. Every
other argument goes to ipykernel as is.
"""

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m skerry.kernels.launch", add_help=False)
    parser.add_argument("--pool", default="cpu", help="the Dask pool of the session (run/dask-pools.json)")
    options, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    from skerry.kernels import session

    session.start(options.pool)  # before ipykernel's imports: both go on together

    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config

    config = Config()
    config.IPKernelApp.extra_extensions = ["skerry.kernels.session"]
    IPKernelApp.launch_instance(argv=rest, config=config)


if __name__ == "__main__":
    main()
