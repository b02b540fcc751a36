"""absl-flag programs over the tf_ntk library. Run from the repository root: python -m binaries.NAME."""
