"""`python -m binaries.train` in a checkout: the `tf-ntk-train` command.

Its code and flags are in tf_ntk.cli.train."""

from tf_ntk.cli import train

if __name__ == "__main__":
    train.run()
