"""bids_anomaly: unsupervised anomaly detection in brain MRI as a BIDS-App."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version('bids_anomaly')
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = '0.0.0+unknown'

APP_NAME = 'bids_anomaly'
CODE_URL = 'https://github.com/bids-anomaly/bids_anomaly'
