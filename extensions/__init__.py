"""skerry.extensions: what skerry adds to the user's Jupyter server and notebooks.

Empty until the per-user data API and the pipeline widgets land (issues 3 and 5);
the package exists so that the distribution's layout is fixed from the start.
"""
