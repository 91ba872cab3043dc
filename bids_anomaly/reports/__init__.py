"""HTML reports (self-contained, readable offline): one per participant, one for the group."""
