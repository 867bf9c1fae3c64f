

def test_pca_with_fewer_samples_than_dimensions_names_the_key() -> None:
    """Found by the ImageNet rehearsal: PCA to 256 over 40 images failed deep inside faiss."""
    import numpy as np
    import pytest

    from sslray.eval.kmeans import preprocess

    x = np.random.default_rng(0).standard_normal((40, 384)).astype(np.float32)
    with pytest.raises(ValueError, match="method.pca_dim to at most 40"):
        preprocess(x, True, 256)
    assert preprocess(x, True, 16).shape == (40, 16)
