"""Datasets (real loaders, a synthetic set), the dataset catalog, views, training streams.

Import the modules themselves (`sslray.data.datasets`, `.streams`, `.views`, `.catalog`): this
package imports nothing, so `sslray.data.catalog` (what config validation needs) does not pull
in torchvision (about 1.5 s: `sslray validate`, a sweep's driver).
"""
