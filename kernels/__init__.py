"""skerry.kernels: kernel specs (CPU, GPU) and kernel start-up.

Empty until the skerry kernels land (issue 5); the package exists so that the
distribution's layout is fixed from the start.
"""
