"""The absl programs, run from a checkout: python -m binaries.NAME. Installed, they are the console
commands tf-ntk-NAME (underscores as hyphens); their code is in the package tf_ntk.cli, which mutes
TensorFlow's C++ start-up noise when it is first imported."""
