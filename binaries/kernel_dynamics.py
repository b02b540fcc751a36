"""`python -m binaries.kernel_dynamics` in a checkout: the `tf-ntk-kernel-dynamics` command.

Its code and flags are in tf_ntk.cli.kernel_dynamics."""

from tf_ntk.cli import kernel_dynamics

if __name__ == "__main__":
    kernel_dynamics.run()
