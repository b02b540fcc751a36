"""Model registry and architectures."""

from keras import layers
import numpy as np
import pytest

from tf_ntk import models


def test_resnet18_matches_the_cifar_resnet18():
    model = models.get("resnet18", num_classes=10, input_shape=(32, 32, 3))
    # torchvision-style CIFAR ResNet-18 (kuangliu): 11,173,962 parameters.
    assert models.num_params(model) == 11_173_962
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x, training=False).numpy(), np.zeros((2, 10)))
    np.testing.assert_array_equal(model(x, training=True).numpy(), np.zeros((2, 10)))
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == (3, 3) and stem.strides == (1, 1)
    assert not any(isinstance(l, (layers.MaxPooling2D, layers.AveragePooling2D)) for l in model.layers)
    bns = [l for l in model.layers if isinstance(l, layers.BatchNormalization)]
    assert len(bns) == 20  # stem + 16 in blocks + 3 projection shortcuts
    assert all(l.momentum == 0.9 and l.epsilon == 1e-5 for l in bns)
    convs = [l for l in model.layers if isinstance(l, layers.Conv2D)]
    assert len(convs) == 20 and sum(l.kernel_size == (1, 1) for l in convs) == 3
    assert [l.filters for l in convs if "conv1" in l.name and "block1" in l.name] == [64, 128, 256, 512]
    assert model.get_layer("logits").kernel.numpy().max() == 0


def test_narrow_resnet18_and_width_option():
    model = models.get("resnet18", 10, (16, 16, 3), width=4)
    assert models.num_params(model) < 100_000
    assert model(np.zeros((1, 16, 16, 3), np.float32)).shape == (1, 10)


def test_mlp_parameter_counts():
    narrow = models.get("mlp", 10, (8, 8, 1), width=256)
    assert models.num_params(narrow) == (64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    wide = models.get("mlp", 10, (32, 32, 3), width=2048)
    assert models.num_params(wide) == 10_510_346
    assert not any(isinstance(l, layers.BatchNormalization) for l in wide.layers)


def test_cnn_has_batchnorm_and_outputs_logits():
    model = models.get("cnn", 7, (8, 8, 1), width=4)
    assert any(isinstance(l, layers.BatchNormalization) for l in model.layers)
    out = model(np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32))
    assert out.shape == (3, 7) and np.abs(out.numpy()).max() > 0


def test_registry_errors_list_the_known_names_and_options():
    with pytest.raises(ValueError, match="unknown model 'vgg'; known models: cnn, mlp, resnet18"):
        models.get("vgg", 10, (8, 8, 1))
    with pytest.raises(ValueError, match="model 'mlp' has no option.*depthh.*its options are: depth, width"):
        models.get("mlp", 10, (8, 8, 1), depthh=3)
    with pytest.raises(ValueError, match="input_shape must be"):
        models.get("mlp", 10, (8, 8))
    assert models.names() == ["cnn", "mlp", "resnet18"]
