"""`python -m binaries.results` in a checkout: the `tf-ntk-results` command.

Its code and flags are in tf_ntk.cli.results."""

from tf_ntk.cli import results

if __name__ == "__main__":
    results.run()
