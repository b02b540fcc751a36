"""`python -m binaries.reproduce` in a checkout: the `tf-ntk-reproduce` command.

Its code and flags are in tf_ntk.cli.reproduce."""

from tf_ntk.cli import reproduce

if __name__ == "__main__":
    reproduce.run()
