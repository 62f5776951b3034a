"""Measuring instruments: the device-synchronised clock, latency and paired A/B, the stage
profile, run-vs-run agreement (the accuracy gate), pixel differences and worker processes."""
