"""``python -m skerry.kernels.launch --pool cpu|gpu -f CONNECTION_FILE``: a skerry kernel.

The command of the skerry kernel specs. It starts the kernel's session and waits for it
(at most ``FIRST_S``: a part still connecting then goes on in its thread while ipykernel
loads), then runs an ipykernel that loads the ``skerry.kernels.session`` IPython
extension: ``skerry`` in the user's namespace. Every other argument goes to ipykernel.
"""

import argparse
import sys

FIRST_S = 2.0  # the most the kernel waits for its session before loading ipykernel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m skerry.kernels.launch", add_help=False)
    parser.add_argument("--pool", default="cpu",
                        help="the pool of the Dask cluster skerry.client connects to (pools.json)")
    options, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    from skerry.kernels import session

    # the session first: under one GIL, its imports and its many small network steps only
    # slow each other down with ipykernel's imports, and all would finish together at the end
    session.start(options.pool).ready(FIRST_S)

    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config

    config = Config()
    config.IPKernelApp.extra_extensions = ["skerry.kernels.session"]
    IPKernelApp.launch_instance(argv=rest, config=config)


if __name__ == "__main__":
    main()
