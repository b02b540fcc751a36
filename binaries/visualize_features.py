"""`python -m binaries.visualize_features` in a checkout: the `tf-ntk-visualize-features` command.

Its code and flags are in tf_ntk.cli.visualize_features."""

from tf_ntk.cli import visualize_features

if __name__ == "__main__":
    visualize_features.run()
