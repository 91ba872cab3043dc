"""``python -m bids_anomaly`` runs the BIDS-App command."""

from bids_anomaly.cli import main

main()
