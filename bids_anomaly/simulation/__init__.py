"""Pure generators of synthetic MRI: anomalies, transforms, acquisition, T1w and DWI.

:mod:`bids_anomaly.simulate` writes them as a BIDS dataset; :mod:`.anomalies` is also the
anomaly insertion used on real data by the benchmarks.
"""
