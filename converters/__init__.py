"""Built-in converters, each registered through the `mnv4_deploy.converters` entry-point group."""
