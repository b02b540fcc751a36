"""`python -m binaries.compute_kernel` in a checkout: the `tf-ntk-compute-kernel` command.

Its code and flags are in tf_ntk.cli.compute_kernel."""

from tf_ntk.cli import compute_kernel

if __name__ == "__main__":
    compute_kernel.run()
