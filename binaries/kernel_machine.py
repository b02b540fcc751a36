"""`python -m binaries.kernel_machine` in a checkout: the `tf-ntk-kernel-machine` command.

Its code and flags are in tf_ntk.cli.kernel_machine."""

from tf_ntk.cli import kernel_machine

if __name__ == "__main__":
    kernel_machine.run()
