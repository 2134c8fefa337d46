"""In the JupyterHub process: configuration, spawner, proxy, authenticator, forms and admin pages."""
