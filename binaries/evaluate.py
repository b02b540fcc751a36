"""`python -m binaries.evaluate` in a checkout: the `tf-ntk-evaluate` command.

Its code and flags are in tf_ntk.cli.evaluate."""

from tf_ntk.cli import evaluate

if __name__ == "__main__":
    evaluate.run()
